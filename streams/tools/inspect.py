"""``feedrank inspect user|feedback-loop|calibration``: the stream tables as readable tables.

Reads a worker's inspection endpoints (any worker: requests are routed to the
owner of a user's partition), so it is read-only by construction.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from typing import Any

from features.events import ACTIONS


def _fmt_rate(x: Any) -> str:
    return "-" if x is None else f"{x:.4f}"


def _ts(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.timezone.utc).strftime("%H:%M:%S.%f")[:-3]


def render_user(d: dict[str, Any], limit: int = 20) -> str:
    lines = [f"user {d['user_id']} (partition {d['partition']}): {d['length']} actions kept"]
    lines.append(f"{'time (UTC)':<13} {'action':<15} {'item':<12} {'type':<8} {'surface':<8} dwell_ms")
    for a in d["actions"][-limit:]:
        lines.append(f"{_ts(a['ts']):<13} {a['action']:<15} {a['item_id']:<12} {a['item_type']:<8} "
                     f"{a['surface']:<8} {a['dwell_ms']}")
    for window in ("counts_3h", "counts_1d"):
        c = d[window]
        acts = ", ".join(f"{a}={c['actions'].get(a, 0)}" for a in ACTIONS)
        lines.append(f"{window}: impressions={c['impressions']} {acts}")
    return "\n".join(lines)


def render_feedback(d: dict[str, Any]) -> str:
    lines = [f"feedback loop, last {d['window_minutes']} minutes (action rate = actions / impressions)",
             f"{'segment':<14} {'impressions':>11} " + " ".join(f"{a[:12]:>12}" for a in ACTIONS)]
    for seg, c in d["segments"].items():
        lines.append(f"{seg:<14} {c['impressions']:>11,} " + " ".join(f"{_fmt_rate(c['rates'][a]):>12}" for a in ACTIONS))
    return "\n".join(lines)


def render_calibration(d: dict[str, Any]) -> str:
    lines = [f"calibrators: {d.get('calibrators')}"]
    drift = d.get("drift")
    if not drift:
        lines.append("no calibration-drift record yet (labels arrive when attribution windows close)")
        return "\n".join(lines)
    lines.append(f"drift at {_ts(drift['ts'])} for model {drift['model_version']}")
    for name, w in drift["windows"].items():
        lines.append(f"window {name}: {'task':<15} {'sum(p)/sum(y)':>13} {'ECE':>8} {'log loss':>9} {'n':>8} "
                     f"{'pos':>6} alert")
        for a, s in w["tasks"].items():
            ce = s.get("calibration_error")
            lines.append(f"{'':>{len(name) + 8}} {a:<15} {(f'{ce:.3f}' if ce is not None else '-'):>13} "
                         f"{(s.get('ece') or 0):>8.4f} {(s.get('log_loss') or 0):>9.4f} {s['n']:>8} "
                         f"{s['positives']:>6} {drift['alerts'][a]['state'] if name == drift['alert_config']['window'] else ''}")
    return "\n".join(lines)


def _cmd(args: argparse.Namespace) -> int:
    from streams.serving.client import ScorerClient, ScorerError
    from streams.settings import Settings

    url = args.url or Settings().url
    with ScorerClient(url, timeout_s=5.0) as client:
        try:
            if args.what == "user":
                if not args.user_id:
                    raise SystemExit("feedrank inspect user needs a USER_ID")
                d = client.get_json(f"/users/{args.user_id}/sequence")
                out = d if args.json else render_user(d, int(args.limit))
            elif args.what == "feedback-loop":
                path = "/feedback-loop" + (f"?segment={args.segment}" if args.segment else "")
                d = client.get_json(path)
                out = d if args.json else render_feedback(d)
            else:
                d = client.get_json("/calibration")
                out = d if args.json else render_calibration(d)
        except ScorerError as exc:
            print(f"error: {exc}")
            return 1
    print(json.dumps(out, indent=2) if args.json else out)
    return 0


def register(sub) -> None:
    from streams.cli import env_flag

    p = sub.add_parser("inspect", help="print a user's sequence, the feedback loop or calibration from a worker")
    p.add_argument("what", choices=["user", "feedback-loop", "calibration"])
    p.add_argument("user_id", nargs="?", default=None)
    env_flag(p, "--url", envvar="FEEDRANK_INSPECT_URL", default=None, help="worker URL (default: this worker's)")
    p.add_argument("--segment", default=None, help="feedback-loop segment, e.g. all, c:US, gc:f:US")
    p.add_argument("--limit", default=20, help="most recent actions to show")
    p.add_argument("--json", action="store_true", help="print raw JSON")
    p.set_defaults(func=_cmd)
