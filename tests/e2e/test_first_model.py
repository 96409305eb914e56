"""The first run: a worker started with no model scores as soon as a model is published (issue 27).

A real ``feedrank worker`` process on the session's broker, started with an
empty model directory, left idle (no request reaches it), then a trained model
is published into that directory: ``POST /score`` answers 200 within seconds,
``/ready`` and ``feedrank_model_info`` follow the model the score process
serves, "no model" is logged at INFO, and the web server listens only where
the settings say (loopback).
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from streams.kafka.topics import ensure_topics, topic_specs

from conftest import TINY_WORLD, WorkerProcess, make_settings, wait_until

pytestmark = pytest.mark.broker


def _listening(port: int) -> set[str]:
    """The local addresses (``a.b.c.d`` or ``::...``) with a socket listening on TCP ``port`` (from /proc/net)."""
    found: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            addr, state = fields[1], fields[3]
            host, hexport = addr.split(":")
            if int(hexport, 16) != port or state != "0A":  # 0A: LISTEN
                continue
            if len(host) == 8:
                found.add(".".join(str(int(host[i:i + 2], 16)) for i in (6, 4, 2, 0)))
            else:
                found.add("::" if int(host, 16) == 0 else host.lower())
    return found


def _body(rng: random.Random) -> bytes:
    from features.world import World

    world = World(seed=TINY_WORLD["seed"], n_users=TINY_WORLD["users"], n_items=TINY_WORLD["items"])
    req = world.new_request(user=rng.randrange(TINY_WORLD["users"]), ts=1_764_000_000_000, n_candidates=40)
    c = req.context
    return json.dumps({
        "user_id": req.user_id, "request_id": req.request_id, "top_k": 10,
        "context": {"surface": c.surface, "country": c.country, "gender": c.gender, "app_type": c.app_type,
                    "device_type": c.device_type, "ts": req.ts},
        "candidates": [{"item_id": x.item_id, "item_type": x.item_type, "features": dict(x.features)}
                       for x in req.candidates]}).encode()


def _model_info(w: WorkerProcess) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(w.get("/metrics").decode()):
        for s in family.samples:
            if s.name == "feedrank_model_info":
                out[s.labels["version"]] = s.value
    return out


def _ready(w: WorkerProcess) -> tuple[int, dict]:
    import urllib.error

    try:
        return 200, json.loads(w.get("/ready"))
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_a_model_published_after_start_is_served_within_seconds(tmp_path: Path, tiny_model_dir: Path,
                                                                 kafka_bootstrap: str) -> None:
    models, calibrators = tmp_path / "models", tmp_path / "calibrators"
    models.mkdir()
    settings = make_settings(tmp_path, kafka_bootstrap, model_dir=models, calibrator_dir=calibrators,
                             model_check_interval_s=1.0)
    ensure_topics(kafka_bootstrap, topic_specs(settings))
    w = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        # the web server listens on loopback only (FEEDRANK_WEB_HOST's default), not on every interface
        assert _listening(settings.web_port) == {"127.0.0.1"}, _listening(settings.web_port)

        # no model: the score process comes up empty and says so at INFO; not ready, no model claimed
        wait_until(lambda: "no model yet" in w.log_tail(), 90, what="score process up with no model",
                   detail=w.log_tail)
        rng = random.Random(0)
        status, _ = w.post("/score", _body(rng))
        assert status == 503
        code, body = _ready(w)
        assert code == 503 and body["model_version"] is None and _model_info(w) == {}

        # publish while idle (as `feedrank train` does: the version's directory, then `latest`)
        version = (tiny_model_dir / "models" / "latest").read_text().strip()
        shutil.copytree(tiny_model_dir / "calibrators", calibrators)
        shutil.copytree(tiny_model_dir / "models" / version, models / version)
        (models / "latest.tmp").write_text(version)
        (models / "latest.tmp").rename(models / "latest")

        wait_until(lambda: w.post("/score", _body(rng))[0] == 200, 30, interval_s=0.5,
                   what="/score 200 after the model is published", detail=w.log_tail)
        status, resp = w.post("/score", _body(rng))
        assert status == 200 and resp["model_version"] == version
        assert _model_info(w) == {version: 1.0}
        wait_until(lambda: _ready(w)[0] == 200, 60, what="/ready 200", detail=lambda: str(_ready(w)))
        assert _ready(w)[1]["model_version"] == version

        # the expected "no model yet" states are INFO; no model or score-process ERROR on the way
        log = w.log_tail(1_000_000)
        assert "no model loaded yet" in log
        errors = [line for line in log.splitlines() if ("ERROR" in line and ("model" in line or "score" in line))]
        assert not errors, "\n".join(errors)
    finally:
        w.stop()
