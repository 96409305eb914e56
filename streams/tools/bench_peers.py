"""``feedrank bench peers``: feedrank's table engine beside raw aiokafka, Quix Streams and Faust, one run.

One broker (a local Apache Kafka by default, through ``resolve_broker``), one
input: ``bench ingest``'s generator (requests of 5 impressions, ~20% engaged, a
prediction log each; ~190-byte JSON values keyed by user), pre-produced once to
three topics of ``--partitions`` partitions. Then each peer, in a process of its
own, reads it from the beginning:

- raw: a bare aiokafka consumer (fetch only): the ceiling;
- quix: Quix Streams, the three topics in one dataframe, one stateful step per
  event: a per-user counter and the user's last 256 event ids (RocksDB,
  changelog on, 1 s commits);
- faust: faust-streaming, one table write per event (a per-user counter,
  RocksDB, changelog), on the first ``--faust-events`` records only (one topic):
  at ~3,000 events/s the full input would take minutes;
- feedrank: ``TableEngine`` on its full job: decode and validate, sequences,
  counters with their dedup, the label join, feedback tiles, checkpoints to the
  changelog every second, labeled examples out.

Each prints events/s (first event to last) and events per CPU-second (the
process's CPU time over the same span, all its threads), and the ratio of both
to Quix's. ``--baseline DIR`` adds a row: the same feedrank job run on the
source tree ``DIR`` (a checkout of another commit), so a change shows beside
its baseline in one run. ``--out DIR`` writes ``results.json``.

Quix Streams pins ``confluent-kafka<2.13``; feedrank pins 2.16.1, so the two
cannot share one environment (nor can an extra of ours install it). Quix runs
under ``--peers-python``: by default the environment that ``--setup`` creates
under ``~/.cache/feedrank/peers-venv`` (``python -m venv`` + pip, once).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

#: the Quix Streams release measured (it runs in its own environment: see the module doc)
QUIX_REQUIREMENT = "quixstreams==3.28.1"
PEERS_VENV = Path.home() / ".cache" / "feedrank" / "peers-venv"
PEERS = ("raw", "quix", "faust", "feedrank")
JOBS = {
    "raw": "fetch only (aiokafka getmany), no decoding, no state",
    "quix": "JSON decode; per user one stateful step: counter + last-256 event ids; RocksDB, changelog",
    "faust": "per user one table write (counter); RocksDB, changelog; capped input (--faust-events)",
    "feedrank": "full job: decode+validate, sequences, counters+dedup, label join, feedback tiles, "
                "checkpoints+changelog, outputs",
}


def peers_python(explicit: str | None = None) -> str | None:
    """The interpreter that has quixstreams: ``explicit``, the peers venv, or this one; None if none has."""
    for cand in (explicit, str(PEERS_VENV / "bin" / "python"), sys.executable):
        if cand and Path(cand).exists() and subprocess.run(
                [cand, "-c", "import quixstreams"], capture_output=True).returncode == 0:
            return cand
    return None


def setup_peers_venv(python: str = sys.executable) -> str:
    """Create the peers environment (once) and install the pinned Quix Streams into it."""
    py = PEERS_VENV / "bin" / "python"
    if not py.exists():
        subprocess.run([python, "-m", "venv", str(PEERS_VENV)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", QUIX_REQUIREMENT], check=True)
    return str(py)


def _run_job(cmd: list[str], timeout_s: float, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one peer's process; its ``PEER_RESULT`` line, or ``{"error": ...}``."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired as exc:
        return {"error": f"timed out after {timeout_s:.0f}s ({(exc.stderr or b'')[-300:]!r})"}
    for line in (proc.stdout + "\n" + proc.stderr).splitlines():  # Faust's worker logs what its agents print
        at = line.find("PEER_RESULT ")
        if at >= 0:
            return json.loads(line[at + len("PEER_RESULT "):])
    return {"error": f"exit {proc.returncode}: {proc.stderr.strip()[-500:]}"}


def _describe(tree: Path) -> str:
    """A short name of a source tree: its commit when it is a git checkout."""
    out = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or tree.name


def _figures(r: dict[str, Any]) -> dict[str, Any]:
    if "error" in r or not r.get("wall_s"):
        return r
    return {**r, "events_per_s": round(r["events"] / r["wall_s"]),
            "events_per_cpu_s": round(r["events"] / r["cpu_s"]) if r["cpu_s"] > 0 else None}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Produce the input once, run every peer of ``args.peers`` on it; the figures."""
    from streams.kafka.broker import resolve_broker
    from streams.kafka.topics import TopicSpec, ensure_topics, topic_specs
    from streams.settings import Settings
    from streams.tools.bench_ingest import BENCH_EVENT_FUTURE_S, T0, _events, _produce

    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = set(peers) - set(PEERS)
    if args.baseline is not None:
        peers.append(f"feedrank@{_describe(args.baseline)}")
    if unknown:
        raise SystemExit(f"unknown peers {sorted(unknown)}; choose from {', '.join(PEERS)}")
    work = Path(tempfile.mkdtemp(prefix="feedrank-peers-"))
    broker = resolve_broker(log_dir=work / "log", kind=None if args.broker == "auto" else args.broker)
    tag = uuid.uuid4().hex[:6]
    s = Settings(KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap, app_id=f"peers-{tag}", partitions=args.partitions,
                 data_dir=work / "feedrank", topic_impressions=f"imp-{tag}", topic_engagements=f"eng-{tag}",
                 topic_predictions=f"pred-{tag}", topic_labeled=f"lab-{tag}", topic_feedback_deltas=f"fb-{tag}",
                 topic_dlq=f"dlq-{tag}", checkpoint_interval_s=1.0, max_event_future_s=BENCH_EVENT_FUTURE_S)
    topics = [s.topic_impressions, s.topic_engagements, s.topic_predictions]
    faust_topic = f"faust-in-{tag}"
    n_faust = min(args.faust_events, args.events)
    result: dict[str, Any] = {"broker": broker.kind, "cpus": os.cpu_count(), "events": args.events,
                              "users": args.users, "partitions": args.partitions,
                              "load_before": os.getloadavg()[0], "peers": {}}
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap}
    try:
        ensure_topics(broker.bootstrap, [*topic_specs(s), TopicSpec(faust_topic, args.partitions)])
        records = _events(args.events, args.users, seed=1, start_ms=T0)
        dt = _produce(broker.bootstrap, s, records, single=False)
        result["produce_events_per_s"] = round(args.events / dt)
        if "faust" in peers:
            from confluent_kafka import Producer

            from streams.tools.loadgen import librdkafka_config, produce_waiting

            conf = {**librdkafka_config(broker.bootstrap, False), "acks": 1}
            p = Producer(conf)
            for _kind, key, value in records[:n_faust]:
                produce_waiting(p, faust_topic, value=value, key=key)
            if p.flush(60):
                raise RuntimeError("bench peers: the Faust input was not acknowledged")
        base = {"bootstrap": broker.bootstrap, "topics": topics, "events": args.events}
        me = [sys.executable, "-m"]
        for peer in peers:
            print(f"bench peers: {peer} ...", file=sys.stderr, flush=True)
            state = str(work / f"state-{peer}")
            job_env = env
            if peer == "raw":
                cmd = [*me, "streams.tools.peers.local_jobs", "raw", json.dumps(base)]
            elif peer == "feedrank":
                cmd = [*me, "streams.tools.peers.local_jobs", "feedrank",
                       json.dumps({**base, "settings": s.model_dump_json()})]
            elif peer == "faust":
                cmd = [*me, "streams.tools.peers.faust_job",
                       json.dumps({**base, "events": n_faust, "topic": faust_topic, "app_id": f"faust-{tag}",
                                   "state_dir": state, "partitions": args.partitions})]
            elif peer.startswith("feedrank@"):  # the same job file, importing the baseline tree's packages
                job = Path(__file__).resolve().parent / "peers" / "local_jobs.py"
                sb = s.model_copy(update={"app_id": f"peers-base-{tag}", "data_dir": work / "feedrank-base"})
                ensure_topics(broker.bootstrap, topic_specs(sb))  # its own changelog and repartition topics
                cmd = [sys.executable, str(job), "feedrank", json.dumps({**base, "settings": sb.model_dump_json()})]
                job_env = {**env, "PYTHONPATH": str(args.baseline)}
            else:
                py = peers_python(args.peers_python)
                if py is None:
                    result["peers"][peer] = {"error": "no interpreter with quixstreams: run `feedrank bench peers "
                                                      "--setup` or pass --peers-python"}
                    continue
                job = Path(__file__).resolve().parent / "peers" / "quix_job.py"
                cmd = [py, str(job), json.dumps({**base, "group": f"quix-{tag}", "state_dir": state})]
            load = os.getloadavg()[0]
            out = _figures(_run_job(cmd, args.timeout, job_env))
            out["load_1m_at_start"] = round(load, 2)
            out["job"] = JOBS[peer.partition("@")[0]] + (f" (source tree {args.baseline})" if "@" in peer else "")
            result["peers"][peer] = out
        quix = result["peers"].get("quix", {})
        for out in result["peers"].values():
            for k in ("events_per_s", "events_per_cpu_s"):
                if out.get(k) and quix.get(k):
                    out[f"{k}_vs_quix"] = round(out[k] / quix[k], 2)
        result["load_after"] = os.getloadavg()[0]
    finally:
        broker.stop()
    return result


def print_table(result: dict[str, Any]) -> None:
    print(f"broker: {result['broker']}; {result['events']:,} events, {result['users']:,} users, "
          f"{result['partitions']} partitions; load (1 min) {result['load_before']:.2f} before, "
          f"{result.get('load_after', float('nan')):.2f} after")
    w = max([9, *map(len, result["peers"])])
    head = f"{'peer':<{w}} {'events':>8} {'events/s':>9} {'ev/CPU-s':>9} {'/s÷quix':>8} {'CPU÷quix':>8} {'load':>5}  job"
    print(head)
    for peer, r in result["peers"].items():
        if "error" in r:
            print(f"{peer:<{w}} error: {r['error']}")
            continue
        print(f"{peer:<{w}} {r['events']:>8,} {r['events_per_s']:>9,} {r.get('events_per_cpu_s') or 0:>9,} "
              f"{r.get('events_per_s_vs_quix', ''):>8} {r.get('events_per_cpu_s_vs_quix', ''):>8} "
              f"{r['load_1m_at_start']:>5}  {r['job']}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from streams.cli import env_flag

    p.add_argument("--events", type=int, default=300_000, help="events pre-produced (every peer but Faust reads all)")
    p.add_argument("--users", type=int, default=10_000, help="distinct users")
    p.add_argument("--partitions", type=int, default=4, help="partitions of every topic")
    p.add_argument("--faust-events", type=int, default=30_000,
                   help="Faust reads only the first this many events (one topic): it is ~100 times slower")
    env_flag(p, "--broker", envvar="FEEDRANK_BROKER", default="kafka",
             help="kafka (a local Apache Kafka), embedded, or auto; KAFKA_BOOTSTRAP_SERVERS wins when set")
    p.add_argument("--peers", default=",".join(PEERS), help="which peers to run, in this order")
    env_flag(p, "--peers-python", envvar="FEEDRANK_PEERS_PYTHON", default=None,
             help=f"the interpreter with quixstreams (default: {PEERS_VENV}/bin/python, else this one)")
    p.add_argument("--setup", action="store_true",
                   help=f"create the peers environment under {PEERS_VENV} ({QUIX_REQUIREMENT}) first")
    p.add_argument("--baseline", type=Path, default=None,
                   help="a source tree (e.g. a git worktree of another commit): its engine runs the feedrank job "
                        "too, as the last row")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds each peer may take")
    p.add_argument("--out", type=Path, default=None, help="directory for results.json; default: print only")


def _cmd(args: argparse.Namespace) -> int:
    if args.setup:
        print(f"peers environment: {setup_peers_venv()}", file=sys.stderr)
    t0 = time.time()
    result = run(args)
    result["seconds"] = round(time.time() - t0, 1)
    print_table(result)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / "results.json"
        path.write_text(json.dumps(result, indent=1, default=str))
        print(f"wrote {path}")
    return 0 if all("error" not in r for r in result["peers"].values()) else 1


def register_bench(bench: Any) -> None:
    """Adds ``feedrank bench peers``."""
    p = bench.add_parser("peers", help="table engine beside raw aiokafka, Quix Streams and Faust (events/s, per CPU-s)")
    add_arguments(p)
    p.set_defaults(func=_cmd)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="feedrank bench peers", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return _cmd(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
