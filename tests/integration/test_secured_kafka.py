"""feedrank on a TLS + SASL/SCRAM listener of a real Apache Kafka: worker, produce and /score through it;
wrong credentials give a clear error naming the settings, not a hang or a retry loop."""

from __future__ import annotations

import json
import time

import pytest

from features.events import Engagement, Impression
from streams.kafka.producer import EventProducer
from streams.kafka.topics import ensure_topics, topic_specs
from streams.tools.chaos.common import ChaosError, score_body

from conftest import make_settings, wait_until

pytestmark = [pytest.mark.broker, pytest.mark.slow]


@pytest.fixture(scope="module")
def secured_kafka(tmp_path_factory):
    from streams.kafka import apache_kafka
    from streams.kafka.secured import SecuredListener

    ok, why = apache_kafka.available()
    if not ok:
        pytest.skip(f"no local Apache Kafka: {why}")
    root = tmp_path_factory.mktemp("secured-kafka")
    listener = SecuredListener.create(root / "certs")
    kafka = apache_kafka.LocalKafka(data_dir=root / "kafka", secured=listener).start(timeout_s=120)
    try:
        yield kafka, listener
    finally:
        kafka.stop()


def _secured_settings(tmp_path, kafka, listener, password: str, **kw):
    pw_file = tmp_path / f"sasl-password-{time.monotonic_ns()}"
    pw_file.write_text(password + "\n")
    return make_settings(tmp_path, kafka.secured_bootstrap, kafka_security_protocol="SASL_SSL",
                         kafka_ssl_cafile=listener.ca_pem, kafka_sasl_mechanism=listener.mechanism,
                         kafka_sasl_username=listener.username, kafka_sasl_password_file=pw_file, **kw)


def test_worker_produce_and_score_through_sasl_ssl(secured_kafka, worker_factory, tmp_path, tiny_model_dir) -> None:
    kafka, listener = secured_kafka
    settings = _secured_settings(tmp_path, kafka, listener, listener.password,
                                 model_dir=tiny_model_dir / "models", calibrator_dir=tiny_model_dir / "calibrators")
    ensure_topics(kafka.secured_bootstrap, topic_specs(settings), settings=settings)
    worker = worker_factory(settings)
    ts = int(time.time() * 1000) - 60_000
    with EventProducer(kafka.secured_bootstrap, settings) as producer:
        for k in range(5):
            producer.send(Impression(event_id=f"i{k}", user_id="u7", item_id=f"it{k}", request_id="r1", ts=ts + k,
                                     surface="home", position=k, item_type="video", country="US", gender="f",
                                     app_type="ios", device_type="phone"))
            producer.send(Engagement(event_id=f"e{k}", user_id="u7", item_id=f"it{k}", request_id="r1",
                                     ts=ts + k + 1, action="click"))

    def clicks() -> int:
        return json.loads(worker.get("/users/u7/sequence"))["counts_1d"]["actions"].get("click", 0)

    wait_until(lambda: clicks() == 5, 90, what="5 clicks applied through the secured listener",
               detail=lambda: worker.log_tail(2000))
    wait_until(lambda: worker.post("/score", json.dumps(score_body("u7")).encode())[0] == 200, 90,
               what="/score answered 200")
    status, body = worker.post("/score", json.dumps(score_body("u7")).encode())
    assert status == 200 and body["items"], body
    log = worker.log_path.read_text()
    assert listener.password not in log, "the SASL password leaked into the worker's log"


def test_wrong_password_is_a_clear_error(secured_kafka, worker_factory, tmp_path) -> None:
    kafka, listener = secured_kafka
    settings = _secured_settings(tmp_path, kafka, listener, "not-the-password")
    t0 = time.monotonic()
    with pytest.raises(ChaosError) as err:
        worker_factory(settings)
    took = time.monotonic() - t0
    text = str(err.value)
    assert "FEEDRANK_KAFKA_SASL" in text, text[-2000:]
    assert "not-the-password" not in text
    assert took < 90, f"the worker took {took:.0f} s to give up"
