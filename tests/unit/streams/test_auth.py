"""The HTTP API token check: route classes, header parsing, token sources (pure logic)."""

from __future__ import annotations

import pytest

from streams.serving.auth import ApiTokenError, api_token, authorized, protected_classes, route_class
from streams.settings import Settings


def test_every_route_falls_in_a_class_and_only_ready_is_open() -> None:
    assert route_class("/ready") is None
    assert route_class("/score") == "score"
    assert route_class("/metrics") == "metrics"
    for path in ("/users/u1/sequence", "/feedback-loop", "/calibration", "/calibration/report", "/tables/stats",
                 "/tables/user/u1", "/status", "/", "/some/page/added/later"):
        assert route_class(path) == "inspection", path


def test_authorized_needs_the_exact_bearer_token() -> None:
    assert authorized("Bearer s3cret", "s3cret")
    for header in (None, "", "s3cret", "Basic s3cret", "Bearer s3cre", "Bearer s3cret2", "bearer s3cret"):
        assert not authorized(header, "s3cret"), header


def test_token_sources(tmp_path) -> None:
    assert api_token(Settings()) is None
    assert api_token(Settings(api_token="abc")) == "abc"
    f = tmp_path / "token"
    f.write_text("from-file\n")
    assert api_token(Settings(api_token="abc", api_token_file=f)) == "from-file"  # the file wins
    f.write_text("  \n")
    with pytest.raises(ApiTokenError, match="FEEDRANK_API_TOKEN_FILE"):
        api_token(Settings(api_token_file=f))
    with pytest.raises(ApiTokenError, match="cannot read"):
        api_token(Settings(api_token_file=tmp_path / "missing"))
    assert "abc" not in repr(Settings(api_token="abc"))  # never in a settings dump or log line


def test_route_classes_are_checked() -> None:
    assert protected_classes(Settings()) == {"score", "inspection", "metrics"}
    assert protected_classes(Settings(api_auth_routes="inspection")) == {"inspection"}
    with pytest.raises(ApiTokenError, match="unknown route classes"):
        protected_classes(Settings(api_auth_routes="score,admin"))
