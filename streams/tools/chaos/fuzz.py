"""``feedrank chaos --scenarios fuzz``: bad events are dead-lettered with a reason, bad ``/score`` bodies
(slow ones included) are answered 4xx, and the good traffic around them is all processed.

Events go through a stock librdkafka producer (confluent-kafka, its default CRC32 partitioner), so most
users' records land on another partition than feedrank's murmur2 one and are forwarded; some good events
are sent twice. Every user's counters must then hold exactly their distinct good events: ``lost`` counts
good events missing from them, ``wrongly applied`` counts anything there that should not be.
"""

from __future__ import annotations

import json
import random
import socket
import threading
import time
from pathlib import Path
from collections import Counter
from typing import Any, Callable

from streams.tools.chaos.common import Worker, _Out, _verdict, make_settings, score_body, wait_until
from streams.kafka.security import kafka_options


_T_FUZZ = (int(time.time() * 1000) // 3_600_000 - 1) * 3_600_000
_IMP = dict(kind="impression", event_id="e", user_id="u1", item_id="i1", request_id="r1", ts=_T_FUZZ,
            surface="home", position=3, item_type="video", country="US", gender="f", app_type="ios",
            device_type="phone")
_ENG = dict(kind="engagement", event_id="g", user_id="u1", item_id="i1", request_id="r1", ts=_T_FUZZ + 5,
            action="repin", dwell_ms=1200)
_UNICODE = ["😀", "\u202e", "\u0000", "\u200b", "é", "\ufeff", "Ω" * 40, "a\nb", "\U0010ffff"]


def _j(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


#: The event-time bounds the corpus is built for (the settings' defaults: 120 s ahead, 7 days behind).
FUZZ_BOUNDS = (120_000, 7 * 86_400_000)


def fuzz_events(n_bad: int, n_good: int, seed: int = 0) -> list[tuple[str, str, bytes | None, bytes | None, bool]]:
    """``(category, kind, key, value, meant_bad)`` rows: bad events of every category interleaved with good ones
    (a few good ones sent twice, as careless producers do)."""
    from features.events import MAX_MESSAGE_BYTES, MAX_TS_MS, MIN_TS_MS

    rng = random.Random(seed)
    now = int(time.time() * 1000)

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

    def far_from_clock(kind: str, i: int) -> tuple[bytes | None, bytes | None]:
        """Inside the contract's range, but far from the producer's clock: would move a watermark."""
        d = base(kind, i)
        d["ts"] = rng.choice([now + 86_400_000, 4_102_358_400_000, MAX_TS_MS - rng.randrange(1000),
                              MIN_TS_MS + rng.randrange(1000), now - 9 * 86_400_000])
        return d["user_id"].encode(), _j(d)

    def no_key(kind: str, i: int) -> tuple[bytes | None, bytes | None]:
        return rng.choice([None, b""]), _j(base(kind, i))

    bad_makers = [("random bytes", random_bytes), ("truncated JSON", truncated), ("nested JSON", nested),
                  ("wrong types", wrong_types), ("unicode", unicode), ("huge strings", huge),
                  ("timestamps out of range", bad_ts), ("null/empty/wrong kind", null_or_wrong_kind),
                  ("ts far from the producer's clock", far_from_clock), ("null or empty key", no_key)]
    rows: list[tuple[str, str, bytes | None, bytes | None, bool]] = []
    for i in range(n_bad):
        cat, make = bad_makers[i % len(bad_makers)]
        kind = rng.choice(["imp", "eng"])
        key, value = make(kind, 10_000 + i)
        rows.append((cat, kind, key, value, True))
    goods_sent: list[tuple[str, str, bytes | None, bytes | None, bool]] = []
    for i in range(n_good):
        kind = "imp" if i % 2 == 0 else "eng"
        d = base(kind, i)
        r = rng.random()
        if r < 0.1 and goods_sent:
            rows.append(("good: re-sent", *rng.choice(goods_sent)[1:]))  # the same bytes again
            continue
        if r < 0.2:
            d["ts"] = now - rng.randrange(20 * 3_600_000)  # hours old, inside the counters' day
            cat = "good: ts hours old"
        elif r < 0.3:
            d["item_id"] = "I" * 64
            cat = "good: longest ids"
        else:
            cat = "good"
        goods_sent.append((cat, kind, d["user_id"].encode(), _j(d), False))
        rows.append(goods_sent[-1])
    goods = [r for r in rows if not r[4]]
    bads = [r for r in rows if r[4]]
    rng.shuffle(bads)
    mixed: list[tuple[str, str, bytes | None, bytes | None, bool]] = []
    while goods or bads:  # interleave, keeping the good ones in order
        pick = bads if bads and (not goods or rng.random() < len(bads) / (len(bads) + len(goods))) else goods
        mixed.append(pick.pop(0))
    return mixed


def expected_counts(rows: list[tuple[str, str, bytes | None, bytes | None, bool]],
                    bad: list[bool]) -> dict[str, Counter]:
    """Each user's distinct good impressions and actions (by ``event_id``): what the counters must hold."""
    seen: set[tuple[str, str, str]] = set()
    want: dict[str, Counter] = {}
    for (_cat, kind, _key, value, _meant), is_bad in zip(rows, bad):
        if is_bad:
            continue
        d = json.loads(value)
        if (kind, d["user_id"], d["event_id"]) in seen:
            continue
        seen.add((kind, d["user_id"], d["event_id"]))
        want.setdefault(d["user_id"], Counter())["impressions" if kind == "imp" else d["action"]] += 1
    return want


def produce_librdkafka(bootstrap: str, records: list[tuple[str, bytes | None, bytes | None]]) -> list[tuple[bytes, int]]:
    """Send ``(topic, key, value)`` records with confluent-kafka on librdkafka's defaults (CRC32 partitioner,
    as most Python and Go producers); returns each record's (key, partition), in order."""
    from confluent_kafka import Producer

    placed: list[tuple[bytes, int] | None] = [None] * len(records)
    errors: list[str] = []

    def on_delivery(i: int):
        def done(err, msg) -> None:
            if err is not None:
                errors.append(str(err))
            else:
                placed[i] = (msg.key() or b"", msg.partition())
        return done

    producer = Producer({"bootstrap.servers": bootstrap, "message.max.bytes": 4 << 20, "linger.ms": 5,
                         **kafka_options("confluent")})
    for i, (topic, key, value) in enumerate(records):
        producer.produce(topic, value, key, on_delivery=on_delivery(i))
        producer.poll(0)
    left = producer.flush(60)
    if left or errors or any(p is None for p in placed):
        raise RuntimeError(f"librdkafka producer: {left} not delivered, errors {errors[:5]}")
    return placed  # type: ignore[return-value]


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

    from features.events import Engagement, Impression

    from streams.engine.ingest import DeadLetter, TimeBounds, decode_message
    from streams.engine.repartition import Router
    from streams.tools.recompute import read_topic
    from streams.kafka.topics import ensure_topics, topic_specs

    out = _Out(echo)
    settings = make_settings(work, bootstrap, model_dir=Path(model_dir).resolve(),
                             calibrator_dir=Path(calibrator_dir).resolve())
    ensure_topics(bootstrap, topic_specs(settings))
    topics = {"imp": settings.topic_impressions, "eng": settings.topic_engagements}
    rows = fuzz_events(bad_events, good_events, seed)
    problems: list[str] = []
    # the contract's own rules are the oracle: a row meant bad that they accept is a finding
    expect_bad = []
    bounds = TimeBounds(*FUZZ_BOUNDS)
    now_ms = int(time.time() * 1000)
    for cat, kind, key, value, meant_bad in rows:
        d = decode_message(topics[kind], 0, 0, key, value, Impression if kind == "imp" else Engagement,
                           now_ms, bounds)
        is_bad = isinstance(d, DeadLetter)
        if is_bad != meant_bad:
            problems.append(f"decoder {'refuses' if is_bad else 'accepts'} a {cat!r} event: {value[:120]!r}")
        expect_bad.append(is_bad)
    n_bad, n_good = sum(expect_bad), len(rows) - sum(expect_bad)
    want = expected_counts(rows, expect_bad)
    out(f"[fuzz] events: {len(rows)} ({n_bad} bad in {len(set(r[0] for r in rows if r[4]))} categories, "
        f"{n_good} good, {sum(r[0] == 'good: re-sent' for r in rows)} of them re-sent) interleaved on both event "
        f"topics through librdkafka's default partitioner; app {settings.app_id}")
    w = Worker(settings, work / "log" / f"{settings.app_id}-fuzz.log", "worker").start()
    try:
        placed = produce_librdkafka(bootstrap, [(topics[kind], key, value) for _c, kind, key, value, _b in rows])
        route = Router(settings.partitions)
        misrouted = sum(1 for (key, p), bad in zip(placed, expect_bad) if not bad and route(key.decode()) != p)
        wait_until(lambda: w.metric("feedrank_events_valid_total") + w.metric("feedrank_events_dead_lettered_total")
                   >= len(rows), 120, "every fuzzed event handled", detail=lambda: w.get("/tables/stats")[:500])
        time.sleep(1.0)  # nothing more arrives
        valid = int(w.metric("feedrank_events_valid_total"))
        dead = int(w.metric("feedrank_events_dead_lettered_total"))
        forwarded = int(w.metric("feedrank_events_repartitioned_total"))
        out(f"  worker: {valid} valid, {dead} dead-lettered (expected {n_good} and {n_bad}); "
            f"{forwarded} forwarded to their user's partition ({misrouted} good records were misrouted)")
        if valid != n_good or dead != n_bad:
            problems.append(f"worker counted {valid} valid / {dead} dead-lettered, expected {n_good} / {n_bad}")
        if forwarded != misrouted:
            problems.append(f"{forwarded} records forwarded, {misrouted} misrouted")
        lost = wrong = 0
        for user, counts in want.items():
            got = w.get_json(f"/users/{user}/sequence")["counts_1d"]
            for name, n in counts.items():
                have = got["impressions"] if name == "impressions" else got["actions"].get(name, 0)
                lost += max(0, n - have)
                wrong += max(0, have - n)
        out(f"  users' counters against their distinct good events: lost {lost}, wrongly applied {wrong}")
        if lost or wrong:
            problems.append(f"counters: {lost} good events lost, {wrong} wrongly applied")
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
            + ", ".join(f"{k} {v}" for k, v in reasons.most_common(10)))
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
            "dead_lettered": dead, "forwarded": forwarded, "misrouted": misrouted, "lost": lost,
            "wrongly_applied": wrong, "dlq_records": len(dlq), "bad_requests": len(bad),
            "bad_requests_4xx": len(bad) - len(bad_not_4xx), "good_requests": good_sent, "good_requests_200": good_ok,
            "slow_requests": slow_requests, "problems": problems}
