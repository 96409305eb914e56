"""End to end on a real broker: events -> tables -> /score -> predictions -> labeled examples.

One worker with a small trained model; the synthetic world plays the users.
"""

from __future__ import annotations

import json
import random
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from features.events import Engagement
from streams.serving.client import ScorerClient, ScorerError
from streams.metrics import scrape
from streams.kafka.producer import EventProducer
from streams.kafka.topics import ensure_topics, topic_specs

from conftest import TINY_WORLD, WorkerProcess, make_settings, wait_until

pytestmark = pytest.mark.broker


def _post(url: str, body: bytes, content_type: str = "application/json") -> tuple[int, dict]:
    req = urllib.request.Request(url + "/score", data=body, method="POST", headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _body(req, top_k: int | None = None) -> dict:
    c = req.context
    body = {"user_id": req.user_id, "request_id": req.request_id,
            "context": {"surface": c.surface, "country": c.country, "gender": c.gender, "app_type": c.app_type,
                        "device_type": c.device_type, "ts": req.ts},
            "candidates": [{"item_id": x.item_id, "item_type": x.item_type, "features": dict(x.features)}
                           for x in req.candidates]}
    if top_k:
        body["top_k"] = top_k
    return body


@pytest.fixture(scope="module")
def worker(tmp_path_factory, tiny_model_dir, kafka_bootstrap):
    """One worker for the module: tables, scorer with replay-fit calibrators, web API."""
    tmp = tmp_path_factory.mktemp("e2e")
    settings = make_settings(tmp, kafka_bootstrap, model_dir=tiny_model_dir / "models",
                             calibrator_dir=tiny_model_dir / "calibrators",
                             attribution_window_s=200.0, allowed_lateness_s=1.0,
                             # one engagement 400 s ahead closes the windows (below): allow that much skew
                             max_event_future_s=600.0)
    ensure_topics(kafka_bootstrap, topic_specs(settings))
    w = WorkerProcess(settings, tmp / "worker.log").start()

    def ready() -> bool:
        try:
            w.get("/ready")
            return True
        except OSError:
            return False

    try:
        wait_until(ready, 90, what="worker ready", detail=w.log_tail)
        yield w
    finally:
        w.stop()


def test_events_show_up_in_the_users_sequence(worker, kafka_bootstrap) -> None:
    now = int(time.time() * 1000)
    with EventProducer(kafka_bootstrap, worker.settings) as producer:
        for i, action in enumerate(["click", "closeup", "repin"]):
            producer.send(Engagement(event_id=f"seq-{i}", user_id="u7", item_id=f"i{i}", request_id="r0",
                                     ts=now + i, action=action))
    wait_until(lambda: json.loads(worker.get("/users/u7/sequence"))["length"] == 3, 30,
               what="three actions in u7's sequence", detail=lambda: worker.get("/users/u7/sequence").decode())
    seq = json.loads(worker.get("/users/u7/sequence"))
    assert [a["action"] for a in seq["actions"]] == ["click", "closeup", "repin"]
    assert seq["counts_1d"]["actions"]["repin"] == 1


def test_ranking_beats_random_and_labels_carry_the_logged_predictions(worker, kafka_bootstrap) -> None:
    from kafka import KafkaConsumer, TopicPartition

    from features.world import World
    from scorer.blender import DEFAULT_WEIGHTS
    from streams.tools.simulate import gain_captured, ranking_quality

    world = World(seed=TINY_WORLD["seed"], n_users=TINY_WORLD["users"], n_items=TINY_WORLD["items"])
    rng = random.Random(1)
    client = ScorerClient(worker.url, timeout_s=10.0)
    start = int(time.time() * 1000)
    totals = np.zeros(3)
    shown_requests = []
    for k in range(40):
        req = world.new_request(user=rng.randrange(TINY_WORLD["users"]), ts=start + k * 10, n_candidates=60)
        resp = client.score(_body(req, top_k=10))
        assert resp.model_version and len(resp.items) == 10
        assert [it.rank for it in resp.items] == list(range(10))
        assert all(0.0 <= p <= 1.0 for it in resp.items for p in it.calibrated.values())
        ids = [it.item_id for it in resp.items]
        totals += ranking_quality(world, req, ids, DEFAULT_WEIGHTS)
        shown_requests.append((req, ids))
    gain = gain_captured(*totals)
    print(f"true utility of the top 10: ranked {totals[0]:.2f}, random {totals[1]:.2f}, best {totals[2]:.2f}; "
          f"gain captured {gain:.3f}")
    assert gain is not None and gain > 0.1, f"ranking is no better than random: gain captured {gain}"

    # show the ranked items; once they are in the tables, move event time past the attribution window
    from streams.engine.views import partition_for

    req, ids = shown_requests[0]
    shown = world.show(req, ids)
    before = worker.metric("feedrank_events_valid_total")
    n_events = len(shown.impressions) + sum(len(e) for e in shown.engagements)
    with EventProducer(kafka_bootstrap, worker.settings) as producer:
        for imp in shown.impressions:
            producer.send(imp)
        # engagements travel in event-time order, as a real app's would
        for e in sorted((e for engs in shown.engagements for e in engs), key=lambda e: e.ts):
            producer.send(e)
    wait_until(lambda: worker.metric("feedrank_events_valid_total") >= before + n_events, 30,
               what="the shown impressions and their engagements applied")
    late = req.ts + 400_000  # past every window: ts + attribution (200 s) + lateness
    with EventProducer(kafka_bootstrap, worker.settings) as producer:
        for p in range(worker.settings.partitions):  # advance every partition's engagement watermark
            uid = next(f"wm{p}-{j}" for j in range(1000) if partition_for(f"wm{p}-{j}", worker.settings.partitions) == p)
            producer.send(Engagement(event_id=f"wm-{uid}", user_id=uid, item_id="i1", request_id="rw",
                                     ts=late, action="click"))

    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap, consumer_timeout_ms=30_000)
    consumer.assign([TopicPartition(worker.settings.topic_labeled, p) for p in range(worker.settings.partitions)])
    consumer.seek_to_beginning()
    wanted = {imp.event_id for imp in shown.impressions}
    examples = {}
    deadline = time.monotonic() + 60
    for msg in consumer:
        ex = json.loads(msg.value)
        if ex["example_id"] in wanted:
            examples[ex["example_id"]] = ex
        if len(examples) == len(wanted) or time.monotonic() > deadline:
            break
    consumer.close()
    assert set(examples) == wanted, f"labeled examples missing: {sorted(wanted - set(examples))}"
    engs_by_imp = {imp.event_id: engs for imp, engs in zip(shown.impressions, shown.engagements)}
    for imp, lab in zip(shown.impressions, shown.labels):
        ex = examples[imp.event_id]
        assert ex["prediction"] is not None, "the scorer's logged prediction was not joined"
        assert ex["prediction"]["position"] == imp.position
        assert set(ex["prediction"]["raw"]) >= {"click", "repin", "hide"}
        from features.events import ACTIONS

        assert [ex["labels"][a] for a in ACTIONS] == [int(v) for v in lab], (ex, engs_by_imp[imp.event_id])


BAD_REQUESTS = [
    ("not json", b"{nope", 400, "<body>"),
    ("empty body", b"", 400, "<body>"),
    ("no candidates", json.dumps({"user_id": "u1", "context": {"surface": "home", "country": "US", "gender": "f",
                                  "app_type": "ios", "device_type": "phone"}, "candidates": []}).encode(), 422,
     "candidates"),
    ("unknown item type", None, 422, "candidates.0.item_type"),
    ("wrong type", None, 422, "user_id"),
    ("too many candidates", None, 422, "candidates"),
    ("bad weight action", None, 422, "weights"),
    ("oversize body", b"{" + b" " * (2 << 20) + b"}", 413, "<body>"),
]


def _bad_body(name: str) -> bytes:
    base = {"user_id": "u1", "context": {"surface": "home", "country": "US", "gender": "f", "app_type": "ios",
                                         "device_type": "phone"},
            "candidates": [{"item_id": "i1", "item_type": "organic"}]}
    if name == "unknown item type":
        base["candidates"] = [{"item_id": "i1", "item_type": "ad"}]
    elif name == "wrong type":
        base["user_id"] = 42
    elif name == "too many candidates":
        base["candidates"] = [{"item_id": f"i{i}", "item_type": "organic"} for i in range(1001)]
    elif name == "bad weight action":
        base["weights"] = {"organic": {"like": 1.0}}
    return json.dumps(base).encode()


@pytest.mark.parametrize("name,body,status,field", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_requests_get_a_4xx_naming_the_field(worker, name, body, status, field) -> None:
    got_status, got = _post(worker.url, body if body is not None else _bad_body(name))
    assert got_status == status, got
    assert got.get("field", "").startswith(field), got
    # and the worker still serves good requests
    good = _post(worker.url, _bad_body("good"))
    assert good[0] == 200, good


def test_a_user_with_no_history_still_gets_a_ranking(worker) -> None:
    with ScorerClient(worker.url) as client:
        resp = client.score({"user_id": "never-seen", "context": {"surface": "home", "country": "BR", "gender": "u",
                                                                  "app_type": "web", "device_type": "desktop"},
                             "candidates": [{"item_id": f"i{i}", "item_type": "video" if i % 3 else "organic"}
                                            for i in range(30)]})
        assert len(resp.items) == 30 and resp.history_len == 0
        # the score stage is split on the score thread: running, waiting for a core, blocked
        m = scrape(worker.url)
        assert m.value("feedrank_score_thread_seconds_count", part="cpu") >= 1
        assert m.value("feedrank_score_thread_seconds_sum", part="cpu") > 0
        assert (m.value("feedrank_score_thread_seconds_count", part="blocked")
                == m.value("feedrank_score_thread_seconds_count", part="cpu"))
        # the served model and its expert GEMMs' number format (auto: bfloat16 where the CPU has it)
        from scorer.export import native_bf16

        want = "bfloat16" if native_bf16() else "float32"
        assert m.value("feedrank_model_info", precision=want, version=resp.model_version) == 1
        assert m.value("feedrank_model_info") == 1  # one model at a time
        with pytest.raises(ScorerError) as info:
            client.score({"user_id": "x", "context": {}, "candidates": []})
        assert info.value.status == 422
