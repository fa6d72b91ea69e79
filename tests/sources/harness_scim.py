"""The source contract's SCIM pull: scim2-server on loopback (as its own `scim2-server` command
serves it), each page capped at `PAGE_SIZE` resources, the scenario POSTed to it over SCIM."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit
from wsgiref.simple_server import WSGIRequestHandler, make_server

import httpx
import pytest
from scim2_models import Pagination, ScimProvider
from scim2_server.memory import InMemoryStorage
from scim2_server.service import ScimService
from scim2_server.testserver.application import BEARER_TOKEN_SCHEME, BearerTokenApplication
from scim2_server.testserver.cli import ThreadingWSGIServer
from scim2_server.utils import (
    load_default_resource_types,
    load_default_schemas,
    load_default_service_provider_config,
)

from tests.sources.harness import PAGE_SIZE, SCENARIO, ScenarioUser, SourceEnv, read_cut_short
from usersync.config import ScimSourceConfig, SecretRef
from usersync.sources.scim import ScimSource

TOKEN = "contract-scim-token"
USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Group"
#: Where the scenario's fields are in a SCIM User (`sources.scim.scim_value` paths).
SCIM_FIELDS = {
    "login": "userName",
    "email": "email",
    "given": "name.givenName",
    "family": "name.familyName",
}


def user_resource(user: ScenarioUser) -> dict[str, Any]:
    return {
        "schemas": [USER_SCHEMA],
        "userName": user.login,
        "name": {"givenName": user.given, "familyName": user.family},
        "displayName": f"{user.given} {user.family}",
        "emails": [{"value": user.email, "type": "work", "primary": True}],
        "active": user.active,
    }


def post_scenario(http: httpx.Client) -> None:
    """POST every scenario user, then every group with its members, to a SCIM server."""
    ids = {}
    for user in SCENARIO.users:
        response = http.post("/Users", json=user_resource(user))
        assert response.status_code == 201, response.text
        ids[user.login] = response.json()["id"]
    for name, members in SCENARIO.groups.items():
        body = {
            "schemas": [GROUP_SCHEMA],
            "displayName": name,
            "members": [{"value": ids[login], "type": "User"} for login in members],
        }
        response = http.post("/Groups", json=body)
        assert response.status_code == 201, response.text


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No access log on stderr."""


@contextmanager
def scim2_server() -> Iterator[str]:
    """scim2-server on loopback with pages capped at `PAGE_SIZE`; yields its base URL."""
    config = load_default_service_provider_config()
    config.authentication_schemes = [BEARER_TOKEN_SCHEME]
    config.pagination = Pagination(index=True, max_page_size=PAGE_SIZE, default_page_size=PAGE_SIZE)
    provider = ScimProvider.from_discovery(
        load_default_schemas().values(), load_default_resource_types().values(), config=config
    )
    app = BearerTokenApplication(
        InMemoryStorage(), provider, ScimService(provider), bearer_tokens=[TOKEN]
    )
    server = make_server(
        "127.0.0.1", 0, app, server_class=ThreadingWSGIServer, handler_class=_QuietHandler
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v2"
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def environment(request: pytest.FixtureRequest) -> Iterator[SourceEnv]:
    with scim2_server() as url:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}) as http:
            post_scenario(http)
        where = urlsplit(url)

        def open_source(base: str = url, **options: Any) -> ScimSource:
            config = ScimSourceConfig(
                kind="scim", url=base, token=SecretRef(env="UNUSED"), page_size=100, **options
            )
            return ScimSource(config, TOKEN)

        env = SourceEnv(
            name="scim",
            fields=SCIM_FIELDS,
            open_source=open_source,
            failing_read=lambda share: read_cut_short(
                (where.hostname or "", where.port or 0),
                lambda port: open_source(f"http://127.0.0.1:{port}{where.path}", max_attempts=2),
                env.attributes,
                share,
            ),
        )
        yield env
