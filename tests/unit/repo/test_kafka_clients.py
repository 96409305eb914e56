"""Every Kafka client feedrank creates gets the security settings: no client connects in plaintext by mistake."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
CONSTRUCTORS = {"AIOKafkaConsumer", "AIOKafkaProducer", "KafkaProducer", "KafkaConsumer", "KafkaAdminClient",
                "Producer", "Consumer", "AdminClient", "App"}
#: files allowed to create clients without them, and why
EXEMPT: dict[str, str] = {}


def _is_options(node: ast.AST) -> bool:
    """``kafka_options(...)`` or ``<KafkaSecurity>.aiokafka()/.kafka_python()/.confluent()/.faust()``."""
    if not isinstance(node, ast.Call):
        return False
    return getattr(node.func, "id", "") == "kafka_options" or (
        isinstance(node.func, ast.Attribute) and node.func.attr in ("aiokafka", "kafka_python", "confluent", "faust"))


def _passes_options(call: ast.Call, config_names: set[str]) -> bool:
    for kw in call.keywords:
        if kw.arg is None and _is_options(kw.value):
            return True
        if kw.arg is None and isinstance(kw.value, ast.Name) and kw.value.id in config_names:
            return True
        if kw.arg is None and isinstance(kw.value, ast.Attribute) and kw.value.attr in config_names:
            return True
    for arg in call.args:
        if isinstance(arg, ast.Dict) and any(k is None and _is_options(v) for k, v in zip(arg.keys, arg.values)):
            return True
        if isinstance(arg, ast.Call) and getattr(arg.func, "id", "") == "librdkafka_config":
            return True  # builds the confluent config with kafka_options("confluent")
        if isinstance(arg, ast.Name) and arg.id in config_names:
            return True
    return False


def test_every_kafka_client_in_streams_gets_the_security_options() -> None:
    bare = []
    for path in sorted((ROOT / "streams").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel in EXEMPT:
            continue
        source = path.read_text()
        tree = ast.parse(source)
        # names of dicts that received kafka_options(...) (config.update(kafka_options(...)) / {**kafka_options(...)})
        config_names = set()
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "update"
                    and isinstance(node.func.value, (ast.Name, ast.Attribute))
                    and any(isinstance(a, ast.Call) and getattr(a.func, "id", "") == "kafka_options" for a in node.args)):
                config_names.add(getattr(node.func.value, "id", None) or node.func.value.attr)
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict) and any(
                    k is None and isinstance(v, ast.Call) and getattr(v.func, "id", "") in ("kafka_options", "librdkafka_config")
                    for k, v in zip(node.value.keys, node.value.values)):
                config_names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        for node in ast.walk(tree):  # self._config = config
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Name) and node.value.id in config_names:
                config_names.update(t.attr for t in node.targets if isinstance(t, ast.Attribute))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            if name not in CONSTRUCTORS:
                continue
            if name == "App" and getattr(node.func, "value", None) is not None \
                    and getattr(node.func.value, "id", "") != "faust":
                continue
            if not _passes_options(node, config_names):
                bare.append(f"{rel}:{node.lineno} {name}(...)")
    assert not bare, "Kafka clients created without kafka_options(...) (streams/kafka/security.py): " + ", ".join(bare)
