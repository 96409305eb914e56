"""With an API token set, the worker's HTTP API lets in only requests that carry it; /ready stays open."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from streams.kafka.topics import ensure_topics, topic_specs

pytestmark = pytest.mark.broker

TOKEN = "t0k-" + "x" * 28


def _status(url: str, token: str | None = None, body: bytes | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_token_guards_every_route_class(settings_factory, worker_factory, tmp_path) -> None:
    token_file = tmp_path / "api-token"
    token_file.write_text(TOKEN + "\n")
    settings = settings_factory(api_token_file=token_file)
    ensure_topics(settings.bootstrap_servers, topic_specs(settings))
    worker = worker_factory(settings)
    url = worker.url
    body = b'{"user_id": "u1", "context": {"surface": "home"}, "candidates": []}'
    for path, data in (("/score", body), ("/metrics", None), ("/users/u1/sequence", None), ("/tables/stats", None),
                       ("/status", None), ("/feedback-loop", None)):
        status, answer = _status(url + path, None, data)
        assert status == 401, (path, status)
        assert b"Authorization" in answer and TOKEN.encode() not in answer
        assert _status(url + path, "wrong-token", data)[0] == 401, path
        assert _status(url + path, TOKEN, data)[0] not in (401, 403), path
    assert _status(url + "/ready")[0] in (200, 503)  # open for probes, whatever it says
    worker.stop()
    log = worker.log_path.read_text()
    assert TOKEN not in log, "the token leaked into the worker's log"
