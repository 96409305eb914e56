"""Deployment files say what the README's deploy guide promises, checked without Docker or a cluster.

- ``deploy/docker-compose.yml`` validates against the Compose Specification
  schema (vendored in ``tests/data``), and ``docker compose config`` when the
  compose plugin exists.
- ``deploy/k8s`` manifests parse and carry the promised fields; ``kubectl
  kustomize`` builds them when kubectl exists.
- Every ``FEEDRANK_*`` key anywhere is a real ``Settings`` field with a valid value.
- The Dockerfile installs exactly the project as ``pyproject.toml`` pins it.
- Topic creation goes through ``topic_specs`` (nothing listed by hand).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from streams.settings import Settings
from streams.kafka.topics import TopicSpec, topic_specs

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "docker-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile"
SCHEMA = Path(__file__).parent / "data" / "compose-spec.json"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SETTINGS_ENV = ("FEEDRANK_", "KAFKA_BOOTSTRAP_SERVERS")


# -- helpers ------------------------------------------------------------------


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def k8s_docs() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.rglob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in k8s_docs() if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def workers(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in doc["services"].items() if s.get("command") == ["worker"]}


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """``Settings`` as a process with exactly ``env`` (plus nothing of ours) would read it."""
    import os

    for key in list(os.environ):
        if key.startswith(SETTINGS_ENV):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    return Settings()


def assert_settings_keys(env: dict[str, Any], where: str) -> None:
    fields = set(Settings.model_fields)
    for key in env:
        if key == "KAFKA_BOOTSTRAP_SERVERS":
            continue
        assert key.startswith("FEEDRANK_"), f"{where}: {key} is not a feedrank setting"
        field = key.removeprefix("FEEDRANK_").lower()
        assert field in fields, f"{where}: {key} names no field of streams.settings.Settings"


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        op, _, rest = buf.partition(" ")
        out.append((op.upper(), rest.strip()))
        buf = ""
    return out


def pip_installs(run: str) -> Iterator[list[str]]:
    """The argument lists of every ``pip install`` in a RUN command."""
    for part in re.split(r"&&|;|\|\||\bthen\b", run):
        words = shlex.split(part.strip(), posix=True) if "pip install" in part else []
        if words[:2] == ["pip", "install"]:
            yield words[2:]


# -- compose --------------------------------------------------------------------


def test_compose_matches_the_compose_spec_schema() -> None:
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is in the test extras")
    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(compose()), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def _compose_plugin() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=20)
    return probe.returncode == 0


def test_docker_compose_config_accepts_the_file(tmp_path: Path) -> None:
    if not _compose_plugin():
        pytest.skip("docker compose plugin not installed (the schema test covers the structure)")
    result = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), "config", "--quiet"],
        capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
                                                          "MODELS_DIR": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr


def test_compose_runs_kafka_in_kraft_mode_with_explicit_topics() -> None:
    kafka = compose()["services"]["kafka"]
    image, _, tag = kafka["image"].partition(":")
    assert image == "apache/kafka" and re.fullmatch(r"\d+\.\d+\.\d+", tag), "pin an official apache/kafka tag"
    from streams.kafka.apache_kafka import KAFKA_VERSION

    assert tag == KAFKA_VERSION, "deploy runs the Kafka version the tests run on (deploy/kafka/pom.xml)"
    env = kafka["environment"]
    assert "controller" in env["KAFKA_PROCESS_ROLES"] and "broker" in env["KAFKA_PROCESS_ROLES"]
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"]
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false", "auto-created topics break co-partitioning"
    assert any(v.endswith(":" + env["KAFKA_LOG_DIRS"]) for v in kafka["volumes"]), "Kafka data on a volume"
    assert kafka["healthcheck"]["test"]


def test_compose_workers_are_separate_stateful_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    doc = compose()
    ws = workers(doc)
    assert len(ws) >= 2
    host_ports, volumes = [], []
    for name, svc in ws.items():
        env = svc["environment"]
        settings = settings_from(env, monkeypatch)
        assert settings.one_record_per_batch == "off", f"{name}: real Kafka batches normally"
        assert settings.bootstrap_servers and settings.bootstrap_servers.split(":")[0] == "kafka"
        assert settings.web_host == "0.0.0.0"
        assert len(ws) <= settings.partitions, "more workers than partitions leaves workers idle"
        port = str(settings.web_port)
        published = [p for p in svc["ports"] if str(p).endswith(":" + port)]
        assert len(published) == 1, f"{name}: publish the web port {port}"
        host_ports.append(str(published[0]).rsplit(":", 1)[0])
        mounts = {m["target"]: m for m in svc["volumes"]}
        data = mounts.get(str(settings.data_dir))
        assert data and data["type"] == "volume", f"{name}: RocksDB (FEEDRANK_DATA_DIR) on a volume"
        assert data["source"] in doc["volumes"], f"{name}: a named, persistent volume"
        volumes.append(data["source"])
        models = mounts.get("/app/var/models")
        assert models and models.get("read_only") is True, f"{name}: model artifacts mounted read-only"
        health = " ".join(svc["healthcheck"]["test"])
        assert f":{port}/metrics" in health
        assert svc["depends_on"]["topics"]["condition"] == "service_completed_successfully"
        assert svc["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert len(set(host_ports)) == len(ws), "distinct host ports"
    assert len(set(volumes)) == len(ws), "one state volume per worker"


def test_every_compose_setting_is_a_settings_field(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, svc in compose()["services"].items():
        env = svc.get("environment") or {}
        if name == "kafka":
            continue
        assert_settings_keys(env, f"compose {name}")
        settings_from(env, monkeypatch)  # values validate


def test_compose_and_job_create_topics_from_topic_specs(monkeypatch: pytest.MonkeyPatch) -> None:
    from streams.kafka import topics
    from streams.cli import build_parser

    job = one("Job", "feedrank-topics")["spec"]["template"]["spec"]["containers"][0]
    commands = {"compose": compose()["services"]["topics"]["command"], "k8s job": job["args"]}
    envs = {"compose": compose()["services"]["topics"]["environment"],
            "k8s job": one("ConfigMap", "feedrank-config")["data"]}
    parser = build_parser()
    for where, argv in commands.items():
        try:
            args = parser.parse_args(argv)
        except SystemExit:  # pragma: no cover - the message is the point
            pytest.fail(f"{where} runs `feedrank {' '.join(argv)}`: add streams.tools.topics_cli to PLUGINS "
                        "in streams/cli.py")
        created: list[list[TopicSpec]] = []
        monkeypatch.setattr(topics, "ensure_topics", lambda bootstrap, specs, rf, timeout_s: created.append(specs))
        settings = settings_from(envs[where], monkeypatch)
        assert args.func(args) == 0
        assert created == [topic_specs(settings)], f"{where}: topics come from topic_specs"
        assert any(s.compacted for s in created[0]), "the state changelog is compacted"


# -- Dockerfile -------------------------------------------------------------------


def test_dockerfile_python_matches_requires_python() -> None:
    (base,) = [args for op, args in dockerfile_instructions() if op == "FROM"]
    m = re.fullmatch(r"python:(\d+)\.(\d+)-slim", base)
    assert m, f"base image {base!r}: use python:X.Y-slim"
    lower = re.search(r">=\s*(\d+)\.(\d+)", PYPROJECT["project"]["requires-python"])
    upper = re.search(r"<\s*(\d+)\.(\d+)", PYPROJECT["project"]["requires-python"])
    version = (int(m[1]), int(m[2]))
    assert lower and version >= (int(lower[1]), int(lower[2]))
    assert upper and version < (int(upper[1]), int(upper[2]))


def test_dockerfile_installs_exactly_the_project() -> None:
    runs = [args for op, args in dockerfile_instructions() if op == "RUN"]
    installs = [words for run in runs for words in pip_installs(run)]
    targets = [[w for w in words if not w.startswith("-") and not w.startswith("$TORCH_INDEX_URL")]
               for words in installs]
    assert ["."] in targets, "the project is installed with `pip install .`"
    for words, target in zip(installs, targets):
        assert target in (["."], ["$torch_pin"]), f"extra packages installed: {words}"
        if target == ["$torch_pin"]:
            assert words[:2] == ["--index-url", "$TORCH_INDEX_URL"]
    # The torch pin is read from pyproject.toml by the Dockerfile's own snippet.
    snippet = re.search(r"python -c '([^']+)'", " ".join(runs))
    assert snippet, "the torch pin comes from pyproject.toml, not a copy"
    pin = subprocess.run([sys.executable, "-c", snippet[1]], cwd=ROOT, capture_output=True, text=True, timeout=30)
    torch = [d.replace(" ", "") for d in PYPROJECT["project"]["dependencies"] if d.startswith("torch")]
    assert pin.returncode == 0, pin.stderr
    assert [pin.stdout.strip()] == torch
    # No package registry is named in the image recipe.
    assert not re.search(r"https?://", DOCKERFILE.read_text())


def test_dockerfile_copies_every_package_and_runs_feedrank_as_non_root(monkeypatch: pytest.MonkeyPatch) -> None:
    ins = dockerfile_instructions()
    copied = {args.split()[0] for op, args in ins if op == "COPY"} | {
        w for op, args in ins if op == "COPY" for w in args.split()[:-1]}
    for pattern in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]:
        package = pattern.rstrip("*")
        assert package in copied, f"package {package} is not copied into the image"
    assert "pyproject.toml" in copied and PYPROJECT["project"]["readme"] in copied
    assert "feedrank" in PYPROJECT["project"]["scripts"]
    (entry,) = [args for op, args in ins if op == "ENTRYPOINT"]
    assert json.loads(entry) == ["feedrank"]
    (user,) = [args for op, args in ins if op == "USER"]
    assert user not in ("root", "0")
    env: dict[str, str] = {}
    for op, args in ins:
        if op == "ENV":
            env.update(dict(kv.split("=", 1) for kv in shlex.split(args)))
    feedrank_env = {k: v for k, v in env.items() if k.startswith(SETTINGS_ENV)}
    assert_settings_keys(feedrank_env, "Dockerfile ENV")
    assert settings_from(feedrank_env, monkeypatch).web_host == "0.0.0.0"
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert not ignored & (copied | {"pyproject.toml"}), ".dockerignore hides a copied path"


# -- Kubernetes -----------------------------------------------------------------------


def test_k8s_manifests_are_namespace_agnostic_and_listed() -> None:
    for doc in k8s_docs():
        assert "namespace" not in doc["metadata"], f"{doc['kind']} {doc['metadata']['name']} names a namespace"
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == on_disk


def test_configmap_keys_are_settings_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    data = one("ConfigMap", "feedrank-config")["data"]
    assert_settings_keys(data, "ConfigMap feedrank-config")
    settings = settings_from(data, monkeypatch)
    assert settings.one_record_per_batch == "off"
    assert settings.state_backend.startswith("rocksdb://")


def test_statefulset_carries_state_probes_and_resources(monkeypatch: pytest.MonkeyPatch) -> None:
    sts = one("StatefulSet", "feedrank-worker")
    cm = one("ConfigMap", "feedrank-config")
    settings = settings_from(cm["data"], monkeypatch)
    spec = sts["spec"]
    assert 2 <= spec["replicas"] <= settings.partitions, "replicas <= FEEDRANK_PARTITIONS"
    headless = one("Service", spec["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    (container,) = spec["template"]["spec"]["containers"]
    assert container["args"] == ["worker"]
    assert {"configMapRef": {"name": "feedrank-config"}} in container["envFrom"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["web"] == settings.web_port
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "web"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/metrics", "port": "web"}
    res = container["resources"]
    assert res["requests"]["cpu"] == res["limits"]["cpu"] == "2"
    assert res["requests"]["memory"] and res["limits"]["memory"]
    (claim,) = spec["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"] and claim["spec"]["resources"]["requests"]["storage"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]]["mountPath"] == str(settings.data_dir), "RocksDB on the pod's PVC"
    models = mounts["models"]
    assert models["readOnly"] is True and models["mountPath"] == "/app/var/models"
    volumes = {v["name"]: v for v in spec["template"]["spec"]["volumes"]}
    claim_name = volumes["models"]["persistentVolumeClaim"]["claimName"]
    assert one("PersistentVolumeClaim", claim_name)
    security = spec["template"]["spec"]["securityContext"]
    assert security["runAsNonRoot"] is True and security["fsGroup"]


def test_credentials_are_a_secret_mounted_not_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """Kafka credentials and the API token come from a Secret the workers mount; no password in the ConfigMap."""
    secret = one("Secret", "feedrank-secrets")
    assert {"kafka-sasl-password", "api-token"} <= set(secret["stringData"])
    pod = one("StatefulSet", "feedrank-worker")["spec"]["template"]["spec"]
    vol = next(v for v in pod["volumes"] if v["name"] == "secrets")
    assert vol["secret"]["secretName"] == "feedrank-secrets" and vol["secret"]["optional"] is True
    mount = next(m for c in pod["containers"] for m in c["volumeMounts"] if m["name"] == "secrets")
    assert mount["readOnly"] is True and mount["mountPath"] == "/etc/feedrank/secrets"
    data = one("ConfigMap", "feedrank-config")["data"]
    assert not any("PASSWORD" in k and not k.endswith("_FILE") for k in data)
    assert "FEEDRANK_API_TOKEN" not in data


def test_services_and_pdb_select_the_workers() -> None:
    sts = one("StatefulSet", "feedrank-worker")
    labels = sts["spec"]["template"]["metadata"]["labels"]
    port_names = {p["name"] for p in sts["spec"]["template"]["spec"]["containers"][0]["ports"]}
    services = [d for d in k8s_docs() if d["kind"] == "Service"]
    assert {s["spec"].get("type", "ClusterIP") for s in services} == {"ClusterIP"}
    assert any(s["spec"].get("clusterIP") == "None" for s in services)
    assert any(s["spec"].get("clusterIP") != "None" for s in services), "a ClusterIP Service for /score"
    for svc in services:
        assert svc["spec"]["selector"].items() <= labels.items(), svc["metadata"]["name"]
        assert all(p["targetPort"] in port_names for p in svc["spec"]["ports"])
    pdb = one("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1


def test_keda_example_keeps_replicas_within_partitions(monkeypatch: pytest.MonkeyPatch) -> None:
    scaled = one("ScaledObject")
    settings = settings_from(one("ConfigMap", "feedrank-config")["data"], monkeypatch)
    assert scaled["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "StatefulSet",
                                                "name": "feedrank-worker"}
    assert scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"] <= settings.partitions
    topics = set()
    for trigger in scaled["spec"]["triggers"]:
        meta = trigger["metadata"]
        assert trigger["type"] == "kafka"
        assert meta["consumerGroup"] == settings.app_id
        assert meta["bootstrapServers"] == settings.bootstrap_servers
        assert meta["allowIdleConsumers"] == "false"
        topics.add(meta["topic"])
    assert topics == {settings.topic_impressions, settings.topic_engagements}


def test_kubectl_kustomize_builds_the_manifests() -> None:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl not installed")
    result = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    kinds = [d["kind"] for d in yaml.safe_load_all(result.stdout) if d]
    # the KEDA example and the Secret example are applied separately (not in kustomization.yaml)
    assert sorted(kinds) == sorted(d["kind"] for d in k8s_docs() if d["kind"] not in ("ScaledObject", "Secret"))


# -- the guide ----------------------------------------------------------------------------


def test_guide_names_only_files_that_exist() -> None:
    guide = (ROOT / "README.md").read_text()
    for path in set(re.findall(r"`((?:deploy|docs|streams|tests)/[\w./-]+)`", guide)):
        assert (ROOT / path).exists(), f"README.md names {path}, which does not exist"
    for promise in ("## Running on real Kafka", "## Scaling out", "/ready", "replicas <= partitions"):
        assert promise in guide, f"README.md lost {promise!r}"
