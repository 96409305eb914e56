"""The ``feedrank`` command. Flags default from environment variables and say so.

Subcommands of other packages register themselves through a ``register(sub)``
function, and benchmarks through ``register_bench(bench_sub)`` under
``feedrank bench <what>``; missing plugins are skipped so a partial install
still runs.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import time
from typing import Any, Sequence

log = logging.getLogger("feedrank")

#: Modules that add subcommands with ``register(subparsers)``.
PLUGINS = (
    "scorer.cli",
    "scorer.calibration_cli",
    "streams.tools.bench_ingest",
    "streams.tools.bench_broker",
    "streams.tools.topics_cli",
    "streams.tools.simulate",
    "streams.tools.inspect",
    "streams.tools.bench_rpc",
    "streams.tools.bench_peers",
    "streams.tools.bench_calibration",
    "streams.tools.consistency",
    "streams.tools.chaos.cli",
    "streams.tools.demo",
)


class EnvDefault(argparse.Action):
    """An option whose default comes from an environment variable (shown in --help)."""

    def __init__(self, envvar: str, required: bool = False, default: Any = None, **kw: Any) -> None:
        if envvar in os.environ:
            default = os.environ[envvar]
        if required and default is not None:
            required = False
        kw["help"] = f"{kw.get('help', '')} [env: {envvar}; default: %(default)s]".strip()
        super().__init__(default=default, required=required, **kw)

    def __call__(self, parser, namespace, values, option_string=None) -> None:  # noqa: D102
        setattr(namespace, self.dest, values)


def env_flag(parser: argparse.ArgumentParser, *names: str, envvar: str, **kw: Any) -> None:
    """``parser.add_argument`` with an env-var default."""
    parser.add_argument(*names, action=EnvDefault, envvar=envvar, **kw)


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("kafka", "aiokafka", "faust", "mode"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


def _cmd_broker(args: argparse.Namespace) -> int:
    from streams.kafka.embedded import EmbeddedBroker

    broker = EmbeddedBroker(port=int(args.port)).start()
    print(f"embedded broker listening; bootstrap: {broker.bootstrap}", flush=True)
    print(f"export KAFKA_BOOTSTRAP_SERVERS={broker.bootstrap}", flush=True)
    print(f"log: {broker.log_path} (Ctrl-C stops it)", flush=True)
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        while not stop and broker.proc is not None and broker.proc.poll() is None:
            time.sleep(0.2)
    finally:
        broker.stop()
    return 0


def _cmd_kafka(args: argparse.Namespace) -> int:
    from streams.kafka import apache_kafka

    if args.fetch_only:
        try:
            print(f"kafka jars in {apache_kafka.ensure_jars()}", flush=True)
        except apache_kafka.KafkaUnavailable as exc:
            print(f"feedrank kafka: {exc.reason}", file=sys.stderr)
            return 2
        return 0
    argv = ["--brokers", str(args.brokers)] + (["--data-dir", str(args.data_dir)] if args.data_dir else [])
    return int(apache_kafka.main(argv) or 0)


def _cmd_worker(args: argparse.Namespace) -> int:
    from streams.settings import Settings
    from streams.worker import run_worker

    overrides: dict[str, Any] = {}
    if args.web_port is not None:
        overrides["web_port"] = int(args.web_port)
    if args.data_dir is not None:
        overrides["data_dir"] = args.data_dir
    settings = Settings(**overrides)
    # faust's Worker parses sys.argv; give it a clean one.
    sys.argv = [sys.argv[0], "worker"]
    run_worker(settings)
    return 0


def _cmd_produce(args: argparse.Namespace) -> int:
    from streams.kafka.broker import resolve_broker
    from features.synthetic import synthetic_events
    from streams.tools.produce import produce_steady
    from streams.kafka.producer import EventProducer
    from streams.settings import Settings
    from streams.kafka.topics import ensure_system_topics

    settings = Settings()
    broker = resolve_broker(log_dir=settings.log_dir)
    if broker.kind == "embedded":
        print(f"no KAFKA_BOOTSTRAP_SERVERS: started an embedded broker at {broker.bootstrap}", file=sys.stderr)
    try:
        ensure_system_topics(broker.bootstrap, settings)
        with EventProducer(broker.bootstrap, settings) as producer:
            counts = produce_steady(producer, synthetic_events(int(args.users), int(args.seed), float(args.rate)),
                                    float(args.rate), float(args.duration), event_time=args.pace == "event-time")
        print(f"sent {counts['impression']} impressions and {counts['engagement']} engagements")
    finally:
        broker.stop()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="feedrank", description=__doc__.splitlines()[0] if __doc__ else None)
    env_flag(parser, "--log-level", envvar="FEEDRANK_LOG_LEVEL", default="INFO", help="log level")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("broker", help="run the embedded Kafka-compatible broker in the foreground")
    env_flag(p, "--port", envvar="FEEDRANK_EMBEDDED_BROKER_PORT", default=9092, help="listen port")
    p.set_defaults(func=_cmd_broker)

    p = sub.add_parser("kafka", help="run a local Apache Kafka (KRaft; jars fetched once by Maven) in the foreground")
    p.add_argument("--brokers", type=int, choices=(1, 3), default=1, help="nodes (3: one quorum, replication 3)")
    p.add_argument("--data-dir", default=None, help="log dirs and logs (default: a new folder under var/kafka)")
    p.add_argument("--fetch-only", action="store_true", help="only fetch the jars into the cache, then exit")
    p.set_defaults(func=_cmd_kafka)

    p = sub.add_parser("worker", help="run a stream worker (embedded broker when KAFKA_BOOTSTRAP_SERVERS is unset)")
    env_flag(p, "--web-port", envvar="FEEDRANK_WEB_PORT", default=None, help="web server port")
    env_flag(p, "--data-dir", envvar="FEEDRANK_DATA_DIR", default=None, help="RocksDB state directory")
    p.set_defaults(func=_cmd_worker)

    p = sub.add_parser("produce", help="send a steady synthetic event stream")
    env_flag(p, "--rate", envvar="FEEDRANK_PRODUCE_RATE", default=1000, help="events per second")
    env_flag(p, "--pace", envvar="FEEDRANK_PRODUCE_PACE", default="event-time", choices=("event-time", "rate"),
             help="event-time: send each event when the clock reaches its timestamp (the world is scaled to about "
                  "--rate; its sessions and time of day move the rate around it; nothing arrives late); rate: "
                  "--rate events/s (event time drifts from the clock)")
    env_flag(p, "--users", envvar="FEEDRANK_PRODUCE_USERS", default=1000, help="distinct users")
    env_flag(p, "--duration", envvar="FEEDRANK_PRODUCE_DURATION", default=60, help="seconds to run")
    env_flag(p, "--seed", envvar="FEEDRANK_PRODUCE_SEED", default=0, help="world seed")
    p.set_defaults(func=_cmd_produce)

    bench = sub.add_parser("bench", help="benchmarks: ingest, score, rpc, broker (each prints numbers)")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    for name in PLUGINS:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            if exc.name and name.startswith(exc.name):
                continue  # plugin not present in this install
            raise
        for hook, target in (("register", sub), ("register_bench", bench_sub)):
            fn = getattr(module, hook, None)
            if fn is not None:
                fn(target)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    from streams.kafka.security import KafkaSecurityError
    from streams.serving.auth import ApiTokenError

    try:
        return int(args.func(args) or 0)
    except (KafkaSecurityError, ApiTokenError) as exc:  # a setting to fix: one line, no traceback
        print(f"feedrank: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
