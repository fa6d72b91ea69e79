"""The SCIM inbox over real HTTP: scim2-tester's checks, persistence across a restart, tokens."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from scim2_client.engines.httpx2 import SyncSCIMClient
from scim2_tester import Status, check_server
from usersync_sandbox.server import serve

from usersync.errors import ConfigError
from usersync.inbox import InboxApp, issue_token, read_inbox, token_is_valid
from usersync.inbox.tokens import TokenCheck
from usersync.store import Store

USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Group"
PATCH_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:PatchOp"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store.open(f"sqlite:///{tmp_path}/store.db")
    yield store
    store.close()


@pytest.fixture
def inbox(store: Store) -> Iterator[tuple[str, dict[str, str], list[tuple[str, dict[str, Any]]]]]:
    """(base URL of profile 'acme', auth headers, changes reported to on_change)."""
    token = issue_token(store.engine, "acme").token
    changes: list[tuple[str, dict[str, Any]]] = []
    app = InboxApp(
        store.engine, on_change=lambda profile, change: changes.append((profile, change))
    )
    with serve(app) as url:
        yield f"{url}/scim/v2/acme", {"Authorization": f"Bearer {token}"}, changes


def _user(name: str, **extra: Any) -> dict[str, Any]:
    return {
        "schemas": [USER_SCHEMA],
        "userName": name,
        "name": {"givenName": name.title(), "familyName": "Doe"},
        "emails": [{"value": f"{name}@example.org", "type": "work", "primary": True}],
        "displayName": f"{name.title()} Doe",
        "active": True,
        **extra,
    }


def test_scim2_tester_checks_all_pass(inbox) -> None:
    base, headers, _ = inbox
    client = SyncSCIMClient(httpx2.Client(base_url=base, headers=headers))
    results = check_server(client)
    failed = [f"{r.title}: {r.reason}" for r in results if r.status != Status.SUCCESS]
    assert len(results) > 50
    assert failed == []


def test_create_patch_filter_page_and_delete(inbox, store: Store) -> None:
    base, headers, changes = inbox
    with httpx.Client(base_url=base, headers=headers) as http:
        ids = [http.post("/Users", json=_user(f"user{i}")).json()["id"] for i in range(5)]
        group = http.post(
            "/Groups",
            json={
                "schemas": [GROUP_SCHEMA],
                "displayName": "engineers",
                "members": [{"value": ids[0]}, {"value": ids[1]}],
            },
        )
        assert group.status_code == 201
        gid = group.json()["id"]
        assert http.post("/Users", json=_user("user0")).status_code == 409  # uniqueness

        removed = http.patch(
            f"/Groups/{gid}",
            json={
                "schemas": [PATCH_SCHEMA],
                "Operations": [{"op": "remove", "path": f'members[value eq "{ids[0]}"]'}],
            },
        )
        assert removed.status_code in (200, 204)
        added = http.patch(
            f"/Groups/{gid}",
            json={
                "schemas": [PATCH_SCHEMA],
                "Operations": [{"op": "add", "path": "members", "value": [{"value": ids[2]}]}],
            },
        )
        assert added.status_code in (200, 204)
        deactivated = http.patch(
            f"/Users/{ids[3]}",
            json={
                "schemas": [PATCH_SCHEMA],
                "Operations": [{"op": "replace", "path": "active", "value": False}],
            },
        )
        assert deactivated.status_code in (200, 204)
        replaced = http.put(f"/Users/{ids[4]}", json=_user("user4", displayName="Renamed"))
        assert replaced.json()["displayName"] == "Renamed"

        members = {m["value"] for m in http.get(f"/Groups/{gid}").json()["members"]}
        assert members == {ids[1], ids[2]}
        assert http.get(f"/Users/{ids[3]}").json()["active"] is False

        found = http.get("/Users", params={"filter": 'userName eq "user2"'}).json()
        assert [r["id"] for r in found["Resources"]] == [ids[2]]
        by_name = http.get("/Groups", params={"filter": 'displayName eq "engineers"'}).json()
        assert by_name["totalResults"] == 1
        http.put(f"/Users/{ids[1]}", json=_user("user1", externalId="ext-1"))
        by_external = http.get("/Users", params={"filter": 'externalId eq "ext-1"'}).json()
        assert [r["userName"] for r in by_external["Resources"]] == ["user1"]

        page = http.get("/Users", params={"startIndex": 2, "count": 2}).json()
        assert (page["totalResults"], page["startIndex"], len(page["Resources"])) == (5, 2, 2)

        assert http.delete(f"/Users/{ids[4]}").status_code == 204
        assert http.get(f"/Users/{ids[4]}").status_code == 404

    stored = read_inbox(store.engine, "acme")
    assert len(stored.users) == 4
    assert [g["displayName"] for g in stored.groups] == ["engineers"]
    assert all(profile == "acme" for profile, _ in changes)
    assert len(changes) == 12  # 5 + 1 users/group created, 3 PATCH, 2 PUT, 1 DELETE (not the 409)


def test_restart_loses_nothing_and_passwords_are_not_kept(store: Store) -> None:
    token = issue_token(store.engine, "acme").token
    headers = {"Authorization": f"Bearer {token}"}
    with serve(InboxApp(store.engine)) as url:
        created = httpx.post(
            f"{url}/scim/v2/acme/Users", headers=headers, json=_user("kim", password="S3cret!")
        ).json()
    with serve(InboxApp(store.engine)) as url:  # a new process: memory rebuilt from the store
        again = httpx.get(f"{url}/scim/v2/acme/Users/{created['id']}", headers=headers)
        assert again.status_code == 200
        assert again.json()["userName"] == "kim"
        listed = httpx.get(f"{url}/scim/v2/acme/Users", headers=headers).json()
        assert listed["totalResults"] == 1
    assert "S3cret!" not in str(read_inbox(store.engine, "acme"))


def test_requests_without_a_valid_token_are_refused(inbox, store: Store) -> None:
    base, _, _ = inbox
    other = issue_token(store.engine, "other").token
    assert httpx.get(f"{base}/Users").status_code == 401
    assert httpx.get(f"{base}/Users", headers={"Authorization": "Bearer nope"}).status_code == 401
    # a token of another profile opens only that profile's inbox
    wrong_inbox = httpx.get(f"{base}/Users", headers={"Authorization": f"Bearer {other}"})
    assert wrong_inbox.status_code == 401
    # discovery of the configuration needs no token (RFC 7643 §5)
    assert httpx.get(f"{base}/ServiceProviderConfig").status_code == 200


def _answer(response: httpx.Response) -> tuple[int, bytes, list[tuple[str, str]]]:
    headers = sorted((k.lower(), v) for k, v in response.headers.items() if k.lower() != "date")
    return response.status_code, response.content, headers


def test_unknown_profiles_and_bad_tokens_get_the_same_answer(inbox, store: Store) -> None:
    """A caller without a token cannot tell which profiles have an inbox."""
    base, _, _ = inbox
    other_token = issue_token(store.engine, "other").token
    nobody = base.replace("/acme", "/nobody")
    for path in ("/Users", "/Groups/123", "/Schemas", "/NoSuchEndpoint"):
        for auth in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": other_token}):
            existing = _answer(httpx.get(f"{base}{path}", headers=auth))
            unknown = _answer(httpx.get(f"{nobody}{path}", headers=auth))
            assert existing[0] == 401
            assert existing == unknown, (path, auth)
        # a valid token of another inbox is no different from a wrong one
        with_other = _answer(
            httpx.get(f"{base}{path}", headers={"Authorization": f"Bearer {other_token}"})
        )
        assert with_other == _answer(
            httpx.get(f"{nobody}{path}", headers={"Authorization": f"Bearer {other_token}"})
        )
        assert with_other[0] == 401
    written = httpx.post(f"{base}/Users", headers={"Authorization": "Bearer x"}, json=_user("a"))
    unknown_written = httpx.post(
        f"{nobody}/Users", headers={"Authorization": "Bearer x"}, json=_user("a")
    )
    assert _answer(written) == _answer(unknown_written)
    assert written.headers["www-authenticate"].startswith("Bearer")
    # discovery answers alike under any profile name (its location is the URL asked)
    config = httpx.get(f"{nobody}/ServiceProviderConfig").text.replace("/nobody/", "/acme/")
    assert config == httpx.get(f"{base}/ServiceProviderConfig").text


def test_rotation_keeps_the_old_token_for_the_grace_period(store: Store) -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    first = issue_token(store.engine, "acme", now=start)
    with pytest.raises(ConfigError, match="--rotate"):
        issue_token(store.engine, "acme", now=start)
    second = issue_token(
        store.engine,
        "acme",
        rotate=True,
        grace=timedelta(hours=1),
        now=start + timedelta(minutes=5),
    )
    assert second.previous_valid_until == start + timedelta(hours=1, minutes=5)
    during = start + timedelta(minutes=30)
    assert token_is_valid(store.engine, "acme", first.token, now=during)
    assert token_is_valid(store.engine, "acme", second.token, now=during)
    after = start + timedelta(hours=2)
    assert not token_is_valid(store.engine, "acme", first.token, now=after)
    assert token_is_valid(store.engine, "acme", second.token, now=after)
    assert not token_is_valid(store.engine, "other", second.token, now=after)


def test_a_remembered_token_is_asked_about_again_within_seconds(store: Store) -> None:
    now = [datetime(2026, 1, 1, tzinfo=UTC)]
    check = TokenCheck(store.engine, ttl_seconds=5, clock=lambda: now[0])
    first = issue_token(store.engine, "acme", now=now[0])
    assert check("acme", first.token)
    assert check.remembered("acme", first.token)
    assert not check("acme", "wrong") and not check.remembered("acme", "wrong")
    assert not check("other", first.token)  # a token opens its own inbox only
    # rotated with a short grace: the old token works until it expires, at most 5 s more
    issue_token(store.engine, "acme", rotate=True, grace=timedelta(seconds=1), now=now[0])
    now[0] += timedelta(seconds=6)
    assert not check.remembered("acme", first.token)
    assert not check("acme", first.token)
