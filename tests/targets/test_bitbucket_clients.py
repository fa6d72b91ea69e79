"""The Bitbucket emulator as a third-party client sees it: atlassian-python-api's `Bitbucket`.

usersync's own client and the emulator were written side by side, so they could share a
misreading of the product. atlassian-python-api builds its own URLs, pages with its own loop
(`nextPageStart` until `isLastPage`), sends its own headers and parses errors its own way; the
user and group administration it does against the emulator must work as against Bitbucket Data
Center. Where the library has no method (creating users, adding to groups, revoking licences),
its generic `post`/`put`/`delete` send the documented calls.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from usersync_sandbox.bitbucket import DEFAULT_GROUP, BitbucketEmulator
from usersync_sandbox.server import serve

atlassian = pytest.importorskip("atlassian")
requests = pytest.importorskip("requests")

CONTEXT = "/bitbucket"
ADMIN = ("admin", "admin-secret")
PAGE_CAP = 3


@pytest.fixture
def bitbucket() -> Iterator[tuple[BitbucketEmulator, atlassian.Bitbucket]]:
    emulator = BitbucketEmulator(context_path=CONTEXT, admin=ADMIN, max_page_size=PAGE_CAP)
    with serve(emulator.app) as url:
        client = atlassian.Bitbucket(url + CONTEXT, username=ADMIN[0], password=ADMIN[1])
        yield emulator, client


def create_user(client: atlassian.Bitbucket, name: str) -> None:
    client.post(
        client.resource_url("admin/users"),
        params={
            "name": name,
            "password": "a-long-random-password",
            "displayName": name.title(),
            "emailAddress": f"{name}@example.com",
            "addToDefaultGroup": "false",
            "notify": "false",
        },
        headers=client.no_check_headers,
    )


def test_create_users_and_groups_then_list_them_all(bitbucket) -> None:
    _emulator, client = bitbucket
    names = [f"user{n}" for n in range(7)]
    for name in names:
        create_user(client, name)
    for group in ("developers", "testers"):
        client.post(client.resource_url("admin/groups"), params={"name": group})

    # Paged by the library past the emulator's cap of 3 per page.
    admin_view = [u["name"] for u in client.get_users_info()]
    assert admin_view == ["admin", *names]
    assert list(client.get_groups()) == sorted([DEFAULT_GROUP, "developers", "testers"])
    one_page = client.get_users(user_filter="user3")
    assert [u["name"] for u in one_page["values"]] == ["user3"]
    assert one_page["values"][0]["slug"] == "user3"
    assert list(client.get_groups(group_filter="dev")) == ["developers"]


def test_add_users_to_groups_and_read_the_members(bitbucket) -> None:
    emulator, client = bitbucket
    for name in ("alice", "bob", "carol", "dave"):
        create_user(client, name)
    client.post(client.resource_url("admin/groups"), params={"name": "developers"})

    client.post(
        client.resource_url("admin/groups/add-users"),
        data={"group": "developers", "users": ["alice", "bob", "carol"]},
    )
    client.post(
        client.resource_url("admin/users/add-groups"),
        data={"user": "dave", "groups": ["developers"]},
    )

    members = [u["name"] for u in client.group_members("developers")]
    assert members == ["alice", "bob", "carol", "dave"]
    assert emulator.members("developers") == members
    # One page of the non-admin list: capped at 3 whatever the limit asked, with the way on.
    first = client.get_users(limit=25)
    assert (first["limit"], first["isLastPage"], first["nextPageStart"]) == (PAGE_CAP, False, 3)
    in_group = client._get_paged(client.resource_url("users"), params={"group": "developers"})
    assert [u["name"] for u in in_group] == members


def test_remove_from_group_revoke_licence_and_delete(bitbucket) -> None:
    emulator, client = bitbucket
    create_user(client, "erin")
    client.put(
        client.resource_url("admin/permissions/users"),
        params={"name": "erin", "permission": "LICENSED_USER"},
    )
    client.post(client.resource_url("admin/groups"), params={"name": "developers"})
    client.post(
        client.resource_url("admin/users/add-groups"),
        data={"user": "erin", "groups": ["developers"]},
    )
    licensed = client.get(client.resource_url("users"), params={"permission": "LICENSED_USER"})
    assert "erin" in [u["name"] for u in licensed["values"]]

    client.post(
        client.resource_url("admin/users/remove-group"),
        data={"context": "erin", "itemName": "developers"},
    )
    client.delete(client.resource_url("admin/permissions/users"), params={"name": "erin"})

    assert list(client.group_members("developers")) == []
    assert emulator.direct_permission("erin") is None
    licensed = client.get(client.resource_url("users"), params={"permission": "LICENSED_USER"})
    assert "erin" not in [u["name"] for u in licensed["values"]]

    deleted = client.delete(client.resource_url("admin/users"), params={"name": "erin"})
    assert deleted["name"] == "erin"
    assert [u["name"] for u in client.get_users_info(user_filter="erin")] == []


def test_refusals_reach_the_library_as_bitbucket_words(bitbucket) -> None:
    _emulator, client = bitbucket
    create_user(client, "frank")

    with pytest.raises(requests.HTTPError, match="already exists") as duplicate:
        create_user(client, "frank")
    assert duplicate.value.response.status_code == 409

    with pytest.raises(requests.HTTPError, match="does not exist") as missing:
        client.post(
            client.resource_url("admin/groups/add-users"),
            data={"group": "no-such-group", "users": ["frank"]},
        )
    assert missing.value.response.status_code == 404

    wrong = atlassian.Bitbucket(client.url, username=ADMIN[0], password="wrong")
    with pytest.raises(requests.HTTPError, match="Authentication failed") as refused:
        list(wrong.get_users_info())
    assert refused.value.response.status_code == 401

    with pytest.raises(requests.HTTPError, match="No resource exists") as unknown:
        client.get(client.resource_url("admin/no-such-thing"))
    assert unknown.value.response.status_code == 404
    assert unknown.value.response.json()["errors"][0]["exceptionName"] is None
