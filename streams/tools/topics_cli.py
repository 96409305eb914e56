"""``feedrank topics {create,list}``: every topic of ``topic_specs`` on a real cluster.

Deployments run ``feedrank topics create`` once before the workers start
(compose's ``topics`` service, the Kubernetes ``feedrank-topics`` Job), so the
topic list, partition counts and compaction come from one place. Creating is
idempotent; existing topics with the wrong partition count are an error.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any, Sequence

log = logging.getLogger(__name__)


def _cmd_create(args: argparse.Namespace) -> int:
    from streams.settings import Settings
    from streams.kafka.topics import ensure_topics, topic_specs

    settings = Settings()
    if not settings.bootstrap_servers:
        print("KAFKA_BOOTSTRAP_SERVERS is not set: name the cluster to create topics on", file=sys.stderr)
        return 2
    specs = topic_specs(settings)
    ensure_topics(settings.bootstrap_servers, specs, settings.replication_factor, timeout_s=float(args.timeout))
    for spec in specs:
        policy = "compact" if spec.compacted else "delete"
        print(f"{spec.name}\tpartitions={spec.partitions}\tcleanup.policy={policy}", flush=True)
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from streams.settings import Settings
    from streams.kafka.topics import topic_specs

    specs = topic_specs(Settings())
    rows: list[dict[str, Any]] = [
        {"name": s.name, "partitions": s.partitions, "compacted": s.compacted, "retention_ms": s.retention_ms}
        for s in specs
    ]
    print(json.dumps(rows, indent=2))
    return 0


def register(sub: Any) -> None:
    """Add ``topics create`` and ``topics list`` to the ``feedrank`` command."""
    p = sub.add_parser("topics", help="create or list every topic feedrank uses (from FEEDRANK_* settings)")
    tsub = p.add_subparsers(dest="topics_command", required=True)
    c = tsub.add_parser("create", help="create missing topics on KAFKA_BOOTSTRAP_SERVERS and check partition counts")
    c.add_argument("--timeout", default=60.0, help="seconds to wait for the cluster and the topics")
    c.set_defaults(func=_cmd_create)
    ls = tsub.add_parser("list", help="print the topic specs (name, partitions, compaction) as JSON")
    ls.set_defaults(func=_cmd_list)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m streams.tools.topics_cli create`` (works before the plugin is registered)."""
    parser = argparse.ArgumentParser(prog="feedrank")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["topics", *(argv if argv is not None else sys.argv[1:])])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
