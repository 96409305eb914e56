"""The README stays true: every setting and every topic is documented there."""

from __future__ import annotations

from pathlib import Path

from streams.settings import Settings
from streams.kafka.topics import topic_specs

README = (Path(__file__).resolve().parents[3] / "README.md").read_text()


def test_every_setting_is_in_the_readme_table() -> None:
    missing = []
    for name in Settings.model_fields:
        env = "KAFKA_BOOTSTRAP_SERVERS" if name == "bootstrap_servers" else f"FEEDRANK_{name.upper()}"
        if f"`{env}`" not in README:
            missing.append(env)
    assert not missing, f"settings missing from README's configuration table: {missing}"


def test_every_topic_is_in_the_readme() -> None:
    missing = [s.name for s in topic_specs(Settings()) if f"`{s.name}`" not in README]
    assert not missing, f"topics missing from README's topic contracts: {missing}"


def test_the_two_commands_are_documented() -> None:
    assert "make demo" in README and "make test" in README
