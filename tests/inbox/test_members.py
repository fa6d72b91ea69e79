"""Group members as rows: a PATCH that adds or removes a member writes that member's row and the
group's small row, whatever the group's size; reads assemble the group from its rows; an old
store's groups are migrated. Over real HTTP, with the statements the store receives counted."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from scim2_server.applications.asgi import ASGIApplication
from scim2_server.memory import AsyncInMemoryStorage, InMemoryStorage
from scim2_server.service import ScimService
from usersync_sandbox.server import serve

from usersync.inbox import InboxApp, inbox_provider, issue_token, read_inbox
from usersync.inbox.storage import read_inbox_users
from usersync.store import Store
from usersync.store.schema import inbox_members, inbox_resources, migrate, schema_version

GROUP_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Group"
PATCH_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
BIG = 500


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store.open(f"sqlite:///{tmp_path}/store.db")
    yield store
    store.close()


@pytest.fixture
def inbox(store: Store) -> Iterator[httpx.Client]:
    token = issue_token(store.engine, "acme").token
    headers = {"Authorization": f"Bearer {token}"}
    with (
        serve(InboxApp(store.engine)) as url,
        httpx.Client(base_url=f"{url}/scim/v2/acme", headers=headers) as http,
    ):
        yield http


class Writes:
    """The rows each write statement on the inbox tables carries, as the database receives them."""

    def __init__(self, engine: sa.Engine) -> None:
        self.statements: list[tuple[str, list[Any]]] = []
        self.engine = engine

    def __enter__(self) -> Writes:
        sa.event.listen(self.engine, "before_cursor_execute", self._record)
        return self

    def __exit__(self, *exc: object) -> None:
        sa.event.remove(self.engine, "before_cursor_execute", self._record)

    def _record(self, conn, cursor, statement, parameters, context, executemany) -> None:
        if statement.lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE")):
            rows = list(parameters) if executemany else [parameters]
            self.statements.append((statement, rows))

    def rows(self, verb: str, table: str) -> list[Any]:
        return [
            row
            for statement, rows in self.statements
            if statement.lstrip().upper().startswith(verb) and f" {table}" in statement
            for row in rows
        ]


def _patch(*operations: dict[str, Any]) -> dict[str, Any]:
    return {"schemas": [PATCH_SCHEMA], "Operations": list(operations)}


def _members(http: httpx.Client, group_id: str) -> list[str]:
    return [m["value"] for m in http.get(f"/Groups/{group_id}").json().get("members", [])]


def _big_group(http: httpx.Client) -> str:
    members = [{"value": f"u{i:04d}", "type": "User"} for i in range(BIG)]
    created = http.post(
        "/Groups", json={"schemas": [GROUP_SCHEMA], "displayName": "all", "members": members}
    )
    assert created.status_code == 201, created.text
    return created.json()["id"]


def test_a_patch_on_a_big_group_writes_only_the_changed_members(inbox, store: Store) -> None:
    http = inbox
    gid = _big_group(http)

    with Writes(store.engine) as writes:
        added = http.patch(
            f"/Groups/{gid}",
            json=_patch({"op": "add", "path": "members", "value": [{"value": "new1"}]}),
        )
        removed = http.patch(
            f"/Groups/{gid}",
            json=_patch({"op": "remove", "path": 'members[value eq "u0007"]'}),
        )
    assert (added.status_code, removed.status_code) == (204, 204)
    assert len(writes.rows("INSERT", "inbox_members")) == 1
    assert len(writes.rows("DELETE", "inbox_members")) == 1
    assert writes.rows("UPDATE", "inbox_members") == []
    # the group's own row is rewritten (new version) but holds none of its members
    assert writes.rows("INSERT", "inbox_resources") == []
    group_rows = writes.rows("UPDATE", "inbox_resources")
    assert len(group_rows) == 2
    for row in group_rows:
        body = next(value for value in row if isinstance(value, str) and value.startswith("{"))
        assert "members" not in json.loads(body)
        assert len(body) < 1000
    # no statement carries more than one member row
    assert all(len(rows) == 1 for _, rows in writes.statements)

    expected = [f"u{i:04d}" for i in range(BIG) if i != 7] + ["new1"]
    assert _members(http, gid) == expected
    stored = read_inbox(store.engine, "acme").groups
    assert [m["value"] for m in stored[0]["members"]] == expected


def test_members_survive_a_restart_in_their_order(store: Store) -> None:
    token = issue_token(store.engine, "acme").token
    headers = {"Authorization": f"Bearer {token}"}
    with (
        serve(InboxApp(store.engine)) as url,
        httpx.Client(base_url=f"{url}/scim/v2/acme", headers=headers) as http,
    ):
        gid = _big_group(http)
        http.patch(
            f"/Groups/{gid}",
            json=_patch(
                {"op": "add", "path": "members", "value": [{"value": "z", "display": "Z"}]},
                {"op": "replace", "path": 'members[value eq "u0001"].display', "value": "One"},
            ),
        )
        before = http.get(f"/Groups/{gid}").text.replace(url, "<inbox>")
    with (
        serve(InboxApp(store.engine)) as url,
        httpx.Client(base_url=f"{url}/scim/v2/acme", headers=headers) as http,
    ):
        after = http.get(f"/Groups/{gid}").text.replace(url, "<inbox>")
    assert after == before
    members = json.loads(after)["members"]
    assert len(members) == BIG + 1
    assert (members[1]["value"], members[1]["display"]) == ("u0001", "One")
    assert (members[-1]["value"], members[-1]["display"]) == ("z", "Z")


def test_patches_keep_scim_semantics_on_the_members_they_name(inbox) -> None:
    http = inbox
    gid = _big_group(http)
    etag = http.get(f"/Groups/{gid}").headers["etag"]

    # adding a member already there changes nothing, so the version stays
    same = http.patch(
        f"/Groups/{gid}",
        json=_patch(
            {"op": "add", "path": "members", "value": [{"value": "u0003", "type": "User"}]}
        ),
    )
    assert same.status_code == 204 and same.headers["etag"] == etag
    # a stale If-Match is refused and nothing is written
    stale = http.patch(
        f"/Groups/{gid}",
        headers={"If-Match": 'W/"stale"'},
        json=_patch({"op": "remove", "path": 'members[value eq "u0001"]'}),
    )
    assert stale.status_code == 412
    assert "u0001" in _members(http, gid)
    # attributes asked for: the answer shows the whole group
    shown = http.patch(
        f"/Groups/{gid}",
        params={"attributes": "members"},
        json=_patch(
            {"op": "replace", "path": "displayName", "value": "everyone"},
            {"op": "remove", "path": 'members[value eq "u0001" or value eq "u0002"]'},
        ),
    )
    assert shown.status_code == 200
    assert len(shown.json()["members"]) == BIG - 2
    assert http.get(f"/Groups/{gid}").json()["displayName"] == "everyone"
    # Entra's form: no path, a value holding members
    http.patch(f"/Groups/{gid}", json=_patch({"op": "Add", "value": {"members": [{"value": "e"}]}}))
    assert _members(http, gid)[-1] == "e"
    # a member without a value names nothing: refused
    refused = http.patch(
        f"/Groups/{gid}",
        json=_patch({"op": "add", "path": "members", "value": [{"display": "nobody"}]}),
    )
    assert refused.status_code == 400
    # replacing all members (the whole group is read then) leaves exactly the new ones
    http.patch(
        f"/Groups/{gid}",
        json=_patch({"op": "replace", "path": "members", "value": [{"value": "only"}]}),
    )
    assert _members(http, gid) == ["only"]


def test_groups_are_found_by_their_members_and_listed_without_them_on_request(
    inbox, store: Store
) -> None:
    http = inbox
    gid = _big_group(http)
    other = http.post("/Groups", json={"schemas": [GROUP_SCHEMA], "displayName": "none"})
    found = http.get("/Groups", params={"filter": 'members.value eq "u0042"'}).json()
    assert [g["id"] for g in found["Resources"]] == [gid]
    assert len(found["Resources"][0]["members"]) == BIG
    listed = http.get("/Groups", params={"excludedAttributes": "members"}).json()
    assert listed["totalResults"] == 2
    assert all("members" not in g for g in listed["Resources"])
    bare = http.get(f"/Groups/{other.json()['id']}").json()
    assert "members" not in bare
    deleted = http.delete(f"/Groups/{gid}")
    assert deleted.status_code == 204
    assert [g["displayName"] for g in read_inbox(store.engine, "acme").groups] == ["none"]


def test_an_old_store_has_its_group_members_moved_to_rows(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/old.db"
    store = Store.open(url)
    members = [{"value": "a", "display": "A"}, {"value": "b"}, {"display": "no value"}]
    members.append({"value": "a", "display": "A again"})
    with store.engine.begin() as conn:
        conn.execute(
            inbox_resources.insert().values(
                profile="acme",
                resource_type="Group",
                id="g1",
                body={
                    "schemas": [GROUP_SCHEMA],
                    "id": "g1",
                    "displayName": "x",
                    "members": members,
                },
                updated_at=sa.func.now(),
            )
        )
        conn.execute(schema_version.update().values(version=1))  # as a store before members rows
    migrate(store.engine)
    with store.engine.connect() as conn:
        body = conn.execute(sa.select(inbox_resources.c.body)).scalar_one()
        rows = conn.execute(
            sa.select(inbox_members.c.member_id, inbox_members.c.body).order_by(inbox_members.c.seq)
        ).all()
    assert "members" not in body
    assert [(value, member.get("display")) for value, member in rows] == [
        ("a", "A again"),
        ("b", None),
    ]
    assert read_inbox(store.engine, "acme").groups[0]["members"] == [
        {"value": "a", "display": "A again"},
        {"value": "b"},
    ]
    # What a sync's extract reads: the ids alone, in the same order.
    assert read_inbox(store.engine, "acme", member_bodies=False).groups[0]["members"] == [
        {"value": "a"},
        {"value": "b"},
    ]
    store.close()


#: PATCH operations of groups, each applied to a group of members u0..u9 (display U0..U9).
PATCHES = [
    [{"op": "add", "path": "members", "value": [{"value": "n1"}, {"value": "n2", "display": "N"}]}],
    [{"op": "add", "path": "members", "value": {"value": "single"}}],
    [{"op": "add", "path": "members", "value": [{"value": "u1"}]}],
    [{"op": "add", "path": "members", "value": [{"value": "u1", "display": "One"}]}],
    [{"op": "add", "path": "members", "value": [{"value": "n1"}, {"value": "n1"}]}],
    [{"op": "remove", "path": 'members[value eq "u2"]'}],
    [{"op": "remove", "path": 'members[value eq "absent"]'}],
    [{"op": "remove", "path": 'members[value eq "u2" or value eq "u3"]'}],
    [{"op": "remove", "path": 'members[value eq "u7"].display'}],
    [{"op": "replace", "path": 'members[value eq "u4"].display', "value": "Four"}],
    [{"op": "replace", "path": 'members[value eq "absent"].display', "value": "X"}],
    [{"op": "replace", "path": 'members[value eq "u6"]', "value": {"display": "Six"}}],
    [{"op": "replace", "path": 'members[value eq "u6"]', "value": {"value": "u66"}}],
    [{"op": "add", "path": 'members[value eq "u5"].display', "value": "Five"}],
    [{"op": "Add", "value": {"members": [{"value": "e1"}], "displayName": "renamed"}}],
    [{"op": "replace", "path": "displayName", "value": "other name"}],
    [{"op": "replace", "path": "displayName"}],
    [{"op": "remove", "path": "members"}],
    [{"op": "replace", "path": "members", "value": [{"value": "only"}]}],
]


def _outcomes(url: str, headers: dict[str, str]) -> list[tuple]:
    """Each PATCH's status, SCIM error type, and the group's name and members after it."""
    outcomes = []
    with httpx.Client(base_url=url, headers=headers) as http:
        for number, operations in enumerate(PATCHES):
            members = [{"value": f"u{i}", "display": f"U{i}"} for i in range(10)]
            group = {"schemas": [GROUP_SCHEMA], "displayName": f"g{number}", "members": members}
            gid = http.post("/Groups", json=group).json()["id"]
            answer = http.patch(f"/Groups/{gid}", json=_patch(*operations))
            error = answer.json().get("scimType") if answer.status_code >= 400 else None
            after = http.get(f"/Groups/{gid}").json()
            merged: dict[str, dict] = {}  # a value listed twice is one member in the inbox
            for m in after.get("members", []):
                merged[m["value"]] = merged.get(m["value"], {}) | m
            shown = [(value, m.get("display")) for value, m in merged.items()]
            outcomes.append((answer.status_code, error, after.get("displayName"), shown))
    return outcomes


def test_group_patches_end_as_scim2_server_alone_leaves_them(inbox, store: Store) -> None:
    """The inbox applies member PATCHes to the members they name only; the outcome (status,
    error, name, members) is what scim2-server gives over its own in-memory storage, except
    that a member listed twice is one member."""
    provider = inbox_provider()
    reference = ASGIApplication(
        AsyncInMemoryStorage(InMemoryStorage()), provider, ScimService(provider)
    )
    with serve(reference) as url:
        expected = _outcomes(f"{url}/v2", {})
    assert _outcomes(str(inbox.base_url), dict(inbox.headers)) == expected


USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"


def test_a_scoped_read_holds_the_named_users_and_their_groups_with_them_alone(
    inbox, store: Store
) -> None:
    """What a run scoped to a few identities reads of the inbox (`read_inbox_users`): the
    oracle is the whole inbox as `read_inbox` gives it, cut down to those users by hand."""
    ids = {}
    for name in ("ann", "bob", "cid", "dee", "eve"):
        made = inbox.post("/Users", json={"schemas": [USER_SCHEMA], "userName": name})
        assert made.status_code == 201, made.text
        ids[name] = made.json()["id"]
    for group, names in {"g1": ["ann", "bob", "cid"], "g2": ["bob", "dee"], "g3": ["eve"]}.items():
        members = [{"value": ids[n], "type": "User"} for n in names]
        made = inbox.post(
            "/Groups", json={"schemas": [GROUP_SCHEMA], "displayName": group, "members": members}
        )
        assert made.status_code == 201, made.text
    asked = {ids["bob"], ids["eve"], "no-such-id"}

    scoped = read_inbox_users(store.engine, "acme", asked)
    whole = read_inbox(store.engine, "acme", member_bodies=False)

    assert sorted(u["userName"] for u in scoped.users) == ["bob", "eve"]
    assert {u["id"]: u for u in scoped.users} == {
        u["id"]: u for u in whole.users if u["id"] in asked
    }
    expected = {
        g["displayName"]: sorted(m["value"] for m in g.get("members", []) if m["value"] in asked)
        for g in whole.groups
    }
    assert {g["displayName"]: sorted(m["value"] for m in g["members"]) for g in scoped.groups} == {
        name: members for name, members in expected.items() if members
    }
    assert read_inbox_users(store.engine, "other", asked).users == []
    assert read_inbox_users(store.engine, "acme", []).users == []


def test_an_old_store_gets_the_index_that_finds_a_users_groups(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path}/old.db")
    with store.engine.begin() as conn:
        conn.execute(sa.text("DROP INDEX ix_inbox_members_member"))
        conn.execute(schema_version.update().values(version=7))  # a store before the index
    migrate(store.engine)
    indexes = {i["name"] for i in sa.inspect(store.engine).get_indexes("inbox_members")}
    assert "ix_inbox_members_member" in indexes
    store.close()
