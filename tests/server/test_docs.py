"""The docs name every Pusher feature setting, webhook kind and code the server uses, so a
setting or a refusal cannot be added without saying so (docs/channels.md, docs/security.md)."""

from __future__ import annotations

import re

from server import protocol
from server.config import WEBHOOK_EVENTS, AppConfig, WebhookConfig
from tests.support.procs import REPO

CHANNELS = (REPO / "docs" / "channels.md").read_text()
ALL_DOCS = CHANNELS + "".join(p.read_text() for p in (REPO / "docs").glob("*.md")) + \
    (REPO / "README.md").read_text()


def test_every_per_app_setting_is_documented() -> None:
    for schema in (AppConfig, WebhookConfig):
        for name in schema.__pydantic_fields__:  # type: ignore[attr-defined]
            assert f"`{name}`" in CHANNELS, f"{schema.__name__}.{name} not in docs/channels.md"
    for name in ("node_timeout", "cache_ttl"):
        assert f"`{name}`" in CHANNELS


def test_every_webhook_kind_is_documented() -> None:
    for kind in WEBHOOK_EVENTS:
        assert f"`{kind}`" in CHANNELS


def test_every_code_the_server_sends_is_documented() -> None:
    codes = {value for name, value in vars(protocol).items()
             if name.isupper() and isinstance(value, int) and 4000 <= value < 4400}
    for code in sorted(codes):
        assert re.search(rf"\b{code}\b", ALL_DOCS), f"code {code} is not documented"


def test_every_api_route_is_documented() -> None:
    for route in ("/events", "/batch_events", "/channels/{name}/users", "/users/{id}/events",
                  "/users/{id}/terminate_connections"):
        assert route in ALL_DOCS, route
