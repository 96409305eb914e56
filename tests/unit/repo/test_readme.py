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


def test_ci_runs_the_readme_test_commands_and_every_long_test_has_a_tier() -> None:
    """CI runs what the README tells a user: `make test` (not `long`), then `make test-long` (only `long`)."""
    root = Path(__file__).resolve().parents[3]
    ci = [line.strip() for line in (root / ".ci" / "run").read_text().splitlines()]
    assert ci.index("make test") < ci.index("make test-long")
    assert "make test-long" in README
    makefile = (root / "Makefile").read_text()
    test_rule = makefile.split("\ntest:")[1].split("\n\n")[0]
    long_rule = makefile.split("\ntest-long:")[1].split("\n\n")[0]
    assert '-m "not long"' in test_rule and "-m long" in long_rule
