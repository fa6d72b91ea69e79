"""The SCIM pull source against scim2-server served over HTTP, and against scripted bad listings.

scim2-server runs as its own `scim2-server` command does (its WSGI app on a threading wsgiref
server, bearer token), on loopback in a thread, configured to cap every page at 7 resources
while the client asks for 100 and `filter.maxResults` says 1000: a pager that advances by the
count it asked for would skip resources.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any
from wsgiref.simple_server import make_server

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
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from usersync_sandbox.server import serve

from usersync.config import ScimSourceConfig, SecretRef
from usersync.errors import IncompleteSourceError, SourceAuthError, SourceUnreachableError
from usersync.sources.scim import ScimSource, scim_value

TOKEN = "scim-test-token"
PAGE_CAP = 7
USERS = 40
USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Group"
ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
ATTRIBUTES = ["userName", "email", "name.givenName", "displayName", f"{ENTERPRISE}:department"]


def _config(url: str, **extra: Any) -> ScimSourceConfig:
    return ScimSourceConfig(
        kind="scim", url=url, token=SecretRef(env="UNUSED"), max_attempts=1, **extra
    )


@pytest.fixture(scope="module")
def scim2_server() -> Iterator[str]:
    """scim2-server on loopback, seeded over HTTP; yields its base URL (…/v2)."""
    config = load_default_service_provider_config()
    config.authentication_schemes = [BEARER_TOKEN_SCHEME]
    config.pagination = Pagination(index=True, max_page_size=PAGE_CAP, default_page_size=PAGE_CAP)
    provider = ScimProvider.from_discovery(
        load_default_schemas().values(), load_default_resource_types().values(), config=config
    )
    app = BearerTokenApplication(
        InMemoryStorage(), provider, ScimService(provider), bearer_tokens=[TOKEN]
    )
    server = make_server("127.0.0.1", 0, app, server_class=ThreadingWSGIServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v2"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=url, headers=headers) as http:
        ids = []
        for i in range(USERS):
            user = {
                "schemas": [USER_SCHEMA, ENTERPRISE],
                "userName": f"user{i:02}",
                "name": {"givenName": f"Given{i}", "familyName": "Family"},
                "displayName": f"User {i}",
                "emails": [
                    {"value": f"home{i}@example.net", "type": "home"},
                    {"value": f"user{i}@example.org", "type": "work", "primary": True},
                ],
                "active": i % 10 != 0,
                ENTERPRISE: {"department": "R&D" if i % 2 else "Sales"},
            }
            response = http.post("/Users", json=user)
            assert response.status_code == 201, response.text
            ids.append(response.json()["id"])
        for name, members in (("staff", ids), ("odd", ids[1::2])):
            group = {
                "schemas": [GROUP_SCHEMA],
                "displayName": name,
                "members": [{"value": m, "type": "User"} for m in members],
            }
            assert http.post("/Groups", json=group).status_code == 201
        # the cap is real: asking for 100 gives 7
        page = http.get("/Users", params={"count": 100}).json()
        assert (page["totalResults"], len(page["Resources"])) == (USERS, PAGE_CAP)
    yield url
    server.shutdown()
    server.server_close()


def test_reads_every_user_group_and_membership_through_capped_pages(scim2_server: str) -> None:
    with ScimSource(_config(scim2_server, page_size=100), TOKEN) as source:
        snapshot = source.extract(ATTRIBUTES)
    users = snapshot.users.set_index("userName")
    assert len(users) == USERS
    assert users["source_id"].is_unique
    assert users.loc["user03", "email"] == "user3@example.org"  # the primary, not the first
    assert users.loc["user03", "name.givenName"] == "Given3"
    assert users.loc["user03", f"{ENTERPRISE}:department"] == "R&D"
    assert not users.loc["user10", "active"]
    assert users["active"].sum() == USERS - USERS // 10
    assert sorted(snapshot.groups["source_group"]) == ["odd", "staff"]
    counts = snapshot.memberships["source_group"].value_counts()
    assert (counts["staff"], counts["odd"]) == (USERS, USERS // 2)


def test_check_proves_the_token_and_refuses_a_wrong_one(scim2_server: str) -> None:
    with ScimSource(_config(scim2_server), TOKEN) as source:
        good = source.check()
    with ScimSource(_config(scim2_server), "wrong") as source:
        bad = source.check()
        with pytest.raises(SourceAuthError, match="token was refused"):
            source.extract(ATTRIBUTES)
    assert good.ok and f"{USERS} user(s)" in good.detail
    assert not bad.ok and "401" in bad.detail


def test_an_unreachable_server_is_a_source_unreachable_error() -> None:
    with ScimSource(_config("http://127.0.0.1:9"), TOKEN) as source:
        with pytest.raises(SourceUnreachableError):
            source.extract(ATTRIBUTES)
        assert not source.check().ok


def test_value_paths() -> None:
    user = {
        "userName": "x",
        "Emails": [{"value": "a@x", "type": "home"}, {"value": "b@x", "type": "work"}],
        "name": {"givenName": "Ann"},
    }
    assert scim_value(user, "email") == "a@x"  # no primary: the first
    assert scim_value(user, 'emails[type eq "work"].value') == "b@x"
    assert scim_value(user, "NAME.givenname") == "Ann"
    assert scim_value(user, "title") is None


def _scripted(pages: list[dict[str, Any]]) -> Starlette:
    """A server answering /Users with these pages in turn, whatever was asked."""
    answers = iter(pages)

    async def users(request: Request) -> JSONResponse:
        return JSONResponse(next(answers))

    return Starlette(routes=[Route("/Users", users)])


def _page(total: int, ids: list[str]) -> dict[str, Any]:
    return {
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:ListResponse"],
        "totalResults": total,
        "Resources": [{"id": i, "userName": i} for i in ids],
    }


@pytest.mark.parametrize(
    ("pages", "message"),
    [
        ([_page(4, ["a", "b"]), _page(5, ["c", "d"])], "totalResults changed from 4 to 5"),
        ([_page(4, ["a", "b"]), _page(4, ["b", "c"])], "3 distinct resources arrived"),
        ([_page(4, ["a", "b"]), _page(4, [])], "startIndex=3 held no resources"),
    ],
    ids=["total-changes", "duplicate-across-pages", "empty-page-before-end"],
)
def test_inconsistent_listings_are_refused_not_shrunk(pages, message: str) -> None:
    with (
        serve(_scripted(pages)) as url,
        ScimSource(_config(url), TOKEN) as source,
        pytest.raises(IncompleteSourceError, match=message),
    ):
        source.list_resources("/Users")


def test_a_consistent_scripted_listing_passes() -> None:
    pages = [_page(3, ["a", "b"]), _page(3, ["c"])]
    with serve(_scripted(pages)) as url, ScimSource(_config(url), TOKEN) as source:
        assert [r["id"] for r in source.list_resources("/Users")] == ["a", "b", "c"]
