"""The Bitbucket emulator's indexes never go stale: after any sequence of changes made through
its HTTP API (accounts created, renamed, edited, deleted; permissions granted and revoked;
memberships added and removed; groups created and deleted), every filtered or paged list
answers what a scan of the emulator's state computes, in the same order and paging."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from usersync_sandbox.bitbucket import GLOBAL_PERMISSIONS, BitbucketEmulator, user_slug
from usersync_sandbox.server import serve

ADMIN = ("admin", "admin-secret")
PAGE = 4
#: few names, so that creations meet renamed and deleted ones; `@` and `_` share a slug
NAMES = ["ann", "Ann.B", "bob", "bo@b", "bo_b", "Cy", "dee", "Émile", "eve", "fay", "ANN2"]
GROUPS = ["devs", "Ops", "ops-2", "all", "stash-users"]
LEVELS = ["LICENSED_USER", "PROJECT_CREATE", "ADMIN"]


@pytest.fixture
def bitbucket() -> Iterator[tuple[BitbucketEmulator, httpx.Client]]:
    emulator = BitbucketEmulator(admin=ADMIN, max_page_size=PAGE)
    with (
        serve(emulator.app) as url,
        httpx.Client(base_url=url + "/rest/api/1.0", auth=ADMIN, timeout=30) as http,
    ):
        yield emulator, http


def every(http: httpx.Client, path: str, **params: Any) -> list[Any]:
    """Every value of a paged list, page by page (the pages' sizes checked too)."""
    values: list[Any] = []
    start = 0
    while True:
        response = http.get(path, params={**params, "start": start, "limit": PAGE})
        assert response.status_code == 200, response.text
        page = response.json()
        assert page["start"] == start and page["size"] == len(page["values"]) <= PAGE
        values += page["values"]
        if page["isLastPage"]:
            assert "nextPageStart" not in page
            return values
        assert page["nextPageStart"] == start + page["size"] and page["size"] == PAGE
        start = page["nextPageStart"]


# -- what the lists should hold, by a scan over the emulator's state -----------------------


def matches(needle: str, *fields: str) -> bool:
    return not needle or any(needle.casefold() in f.casefold() for f in fields)


def scan_users(bb: BitbucketEmulator, needle: str) -> list[str]:
    if "\0" in needle:
        return []
    chosen = [u for u in bb.users.values() if matches(needle, u.name, u.email, u.display_name)]
    return [u.name for u in sorted(chosen, key=lambda u: u.name.casefold())]


def scan_granted(bb: BitbucketEmulator, needle: str) -> list[tuple[str, str]]:
    return [
        (u.name, bb.user_permissions[key])
        for key, u in sorted(bb.users.items())
        if key in bb.user_permissions and matches(needle, u.name, u.display_name, u.email)
    ]


def scan_members(bb: BitbucketEmulator, group: str, needle: str) -> list[str]:
    key = group.casefold()
    if key not in bb.groups or "\0" in needle:
        return []
    chosen = [u for u in bb.users.values() if key in u.groups]
    chosen = [u for u in chosen if matches(needle, u.name, u.email, u.display_name)]
    return [u.name for u in sorted(chosen, key=lambda u: u.name.casefold())]


def scan_application_users(
    bb: BitbucketEmulator, group: str, permission: str, needle: str
) -> list[str]:
    chosen = list(bb.users.values())
    if group:
        chosen = [u for u in chosen if group.casefold() in u.groups]
    if permission:
        floor = GLOBAL_PERMISSIONS.index(permission)
        chosen = [
            u
            for u in chosen
            if (held := bb.effective_permission(u.name)) and GLOBAL_PERMISSIONS.index(held) >= floor
        ]
    return [
        u.name
        for u in sorted(chosen, key=lambda u: u.name.casefold())
        if matches(needle, u.name, u.display_name, u.email)
    ]


def scan_licensed(bb: BitbucketEmulator) -> int:
    return sum(1 for name in bb.users if bb.effective_permission(name) is not None)


def scan_slug(bb: BitbucketEmulator, slug: str) -> str | None:
    return next((u.name for u in bb.users.values() if user_slug(u.name) == slug), None)


# -- changes through the API ---------------------------------------------------------------


def change(rng: random.Random, http: httpx.Client) -> None:
    """One random change through the HTTP API (refusals, 404s and 409s included)."""
    name, other = rng.choice(NAMES), rng.choice(NAMES)
    group = rng.choice(GROUPS)
    spelled = rng.choice([name, name.upper(), name.lower()])
    action = rng.randrange(14)
    if action < 3:
        http.post(
            "/admin/users",
            params={
                "name": name,
                "displayName": f"{name} {rng.choice(['Smith', 'Ng', 'ann'])}",
                "emailAddress": f"{rng.choice(['x', 'bob', name])}@corp.example",
                "password": "pw",
                "addToDefaultGroup": rng.choice(["true", "false"]),
            },
        )
    elif action == 3:
        http.put(
            "/admin/users",
            json={
                "name": spelled,
                "displayName": rng.choice(["Zed", "Ann Other", name]),
                "email": f"{rng.choice(['moved', 'eve', other])}@corp.example",
            },
        )
    elif action == 4:
        http.request("DELETE", "/admin/users", params={"name": spelled})
    elif action == 5:
        http.post("/admin/users/rename", json={"name": spelled, "newName": other})
    elif action == 6:
        http.put(
            "/admin/permissions/users",
            params={"name": spelled, "permission": rng.choice(LEVELS)},
        )
    elif action == 7:
        http.request("DELETE", "/admin/permissions/users", params={"name": spelled})
    elif action == 8:
        http.post("/admin/users/add-groups", json={"user": spelled, "groups": [group]})
    elif action == 9:
        http.post("/admin/groups/add-users", json={"group": group, "users": [name, other]})
    elif action == 10:
        http.post("/admin/users/remove-group", json={"context": spelled, "itemName": group})
    elif action == 11:
        if rng.random() < 0.5:
            http.post("/admin/groups", params={"name": group})
        else:
            http.request("DELETE", "/admin/groups", params={"name": group})
    elif action == 12:
        http.put(
            "/admin/permissions/groups",
            params={"name": group, "permission": rng.choice(LEVELS)},
        )
    else:
        http.request("DELETE", "/admin/permissions/groups", params={"name": group})


def check(rng: random.Random, bb: BitbucketEmulator, http: httpx.Client) -> None:
    """Every list, with a few filters, against the scan."""
    pool = [u.name for u in bb.users.values()] + [u.email for u in bb.users.values()]
    word = rng.choice(pool)
    at = rng.randrange(len(word))
    needles = ["", word[at : at + rng.randint(1, 4)], word.upper(), "zz-none", "\0", "\x01"]
    for needle in needles:
        got = [u["name"] for u in every(http, "/admin/users", filter=needle)]
        assert got == scan_users(bb, needle), needle
        rows = every(http, "/admin/permissions/users", filter=needle)
        assert [(r["user"]["name"], r["permission"]) for r in rows] == scan_granted(bb, needle)
        for group in [*GROUPS, "no-such-group"]:
            got = [u["name"] for u in every(http, "/admin/groups/more-members", context=group)]
            assert got == scan_members(bb, group, ""), group
            if needle:
                listed = every(http, "/admin/groups/more-members", context=group, filter=needle)
                assert [u["name"] for u in listed] == scan_members(bb, group, needle)
    for group in ["", *GROUPS]:
        for permission in ["", *GLOBAL_PERMISSIONS]:
            needle = rng.choice(needles[:3])
            params = {"group": group, "permission": permission, "filter": needle}
            got = [u["name"] for u in every(http, "/users", **params)]
            assert got == scan_application_users(bb, group, permission, needle), params
    for name in NAMES:
        answer = http.get(f"/users/{user_slug(name)}")
        expected = scan_slug(bb, user_slug(name))
        if expected is None:
            assert answer.status_code == 404
        else:
            assert answer.status_code == 200 and answer.json()["name"] == expected
    license_ = http.get("/admin/license").json()
    assert license_["status"]["currentNumberOfUsers"] == scan_licensed(bb)
    for group in GROUPS:
        if group.casefold() in bb.groups:
            assert bb.members(group) == sorted(
                u.name for u in bb.users.values() if group.casefold() in u.groups
            )


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_filtered_and_paged_lists_follow_every_change(bitbucket, seed):
    bb, http = bitbucket
    rng = random.Random(seed)
    bb.seed_group("devs")
    for name in NAMES[:6]:
        bb.seed_user(name, f"{name}@corp.example", f"{name} Person", groups=["devs"])
    bb.seed_group("all", NAMES[:4])
    for step in range(120):
        change(rng, http)
        if step % 4 == 3:
            check(rng, bb, http)
    check(rng, bb, http)


def test_direct_edits_of_the_state_reach_the_lists(bitbucket):
    """Tests and bench tools change the state directly too (tests/lifecycle/products.py)."""
    bb, http = bitbucket
    bb.seed_group("devs")
    for name in ("ann", "bob", "cy"):
        bb.seed_user(name, f"{name}@corp.example", name.title(), groups=["devs"])
    rng = random.Random(0)
    check(rng, bb, http)
    with bb._lock:
        bb.users["bob"].groups.discard("devs")
        bb.users["cy"].groups |= {"ops"}
        bb.users["ann"].groups.clear()
        bb.users["bob"].groups = {"all"}
        bb.user_permissions.pop("ann", None)
        bb.user_permissions.setdefault("bob", "PROJECT_CREATE")
        bb.users["cy"].email = "someone.else@corp.example"
    bb.seed_group("ops")
    check(rng, bb, http)
    assert [u["name"] for u in every(http, "/admin/groups/more-members", context="ops")] == ["cy"]
    assert [u["name"] for u in every(http, "/admin/groups/more-members", context="devs")] == ["cy"]
    assert [u["name"] for u in every(http, "/admin/users", filter="SOMEONE")] == ["cy"]
