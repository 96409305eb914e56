"""An optional bearer-token check on the worker's HTTP API, per route class.

Off until a token is set (``FEEDRANK_API_TOKEN`` or, better, ``FEEDRANK_API_TOKEN_FILE``). Then every
request to a protected class needs ``Authorization: Bearer <token>``; without it the answer is 401
naming what is missing, never the token. ``/ready`` stays open for orchestrators' probes. The check is
one aiohttp middleware on the whole web app, so a route added anywhere (``/tables/*`` in the worker,
a new page later) falls in a class by its path and cannot be forgotten.

    score       POST /score
    inspection  /users/..., /feedback-loop, /calibration..., /tables/..., /status, /
    metrics     /metrics
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from typing import Any

log = logging.getLogger(__name__)

ROUTE_CLASSES = ("score", "inspection", "metrics")
OPEN_PATHS = frozenset({"/ready"})
HEADER = "Authorization"


class ApiTokenError(ValueError):
    """The token settings cannot be used (unreadable file, empty token, unknown route class)."""


def route_class(path: str) -> str | None:
    """The class of a request path, or None for the paths that are always open."""
    if path in OPEN_PATHS:
        return None
    if path == "/score":
        return "score"
    if path == "/metrics":
        return "metrics"
    return "inspection"


def api_token(settings: Any) -> str | None:
    """The configured token (the file wins over the variable), or None when the check is off."""
    token_file, token_var = getattr(settings, "api_token_file", None), getattr(settings, "api_token", None)
    if token_file is not None:
        try:
            token = token_file.read_text().strip()
        except OSError as exc:
            raise ApiTokenError(f"FEEDRANK_API_TOKEN_FILE={token_file}: cannot read it "
                                f"({exc.strerror})") from None
        if not token:
            raise ApiTokenError(f"FEEDRANK_API_TOKEN_FILE={token_file} is empty")
        return token
    if token_var is not None:
        token = token_var.get_secret_value().strip()
        if not token:
            raise ApiTokenError("FEEDRANK_API_TOKEN is set but empty")
        return token
    return None


def protected_classes(settings: Any) -> frozenset[str]:
    classes = frozenset(c.strip() for c in settings.api_auth_routes.split(",") if c.strip())
    unknown = classes - set(ROUTE_CLASSES)
    if unknown:
        raise ApiTokenError(f"FEEDRANK_API_AUTH_ROUTES: unknown route classes {sorted(unknown)}; "
                            f"use a comma-separated subset of {', '.join(ROUTE_CLASSES)}")
    return classes


def authorized(header: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header carries ``token`` (constant-time comparison)."""
    if not header or not header.startswith("Bearer "):
        return False
    return hmac.compare_digest(header[len("Bearer "):].strip().encode(), token.encode())


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def install_auth(app: Any, settings: Any) -> str | None:
    """Add the check to ``app``'s web server when a token is set; returns the token (for forwarding)."""
    token = api_token(settings)
    classes = protected_classes(settings)
    if token is None:
        if not is_loopback(settings.web_host):
            log.warning("the HTTP API listens on %s without a token: anyone who reaches port %d can score and "
                        "read users' recent actions; set FEEDRANK_API_TOKEN_FILE", settings.web_host,
                        settings.web_port)
        return None
    from aiohttp import web

    @web.middleware
    async def check_token(request, handler):
        cls = route_class(request.path)
        if cls is None or cls not in classes or authorized(request.headers.get(HEADER), token):
            return await handler(request)
        return web.json_response(
            {"error": "unauthorized", "field": HEADER,
             "message": f"{cls} routes need 'Authorization: Bearer <token>' (the worker's FEEDRANK_API_TOKEN)"},
            status=401, headers={"WWW-Authenticate": 'Bearer realm="feedrank"'})

    app.web.web_app.middlewares.append(check_token)
    log.info("HTTP API token required for: %s (/ready stays open)", ", ".join(sorted(classes)) or "nothing")
    return token


__all__ = ["ApiTokenError", "HEADER", "ROUTE_CLASSES", "api_token", "authorized", "install_auth",
           "protected_classes", "route_class"]
