"""The inbox's offboarding fast path: which accepted writes disable or delete a user, and the
event sent at once for each (issue 26 point 2). Oracle: SCIM's forms of "active false"
(RFC 7644 §3.5.2: a path `active`, or a path-less value holding it; a PUT of the whole user)
and DELETE are offboardings; anything else is not."""

from __future__ import annotations

import json

import pytest
from usersync_tasks.inbox_events import EVENT, OFFBOARDED_EVENT, InboxEventEmitter

from usersync.inbox.offboarding import offboarded_user


def patch(*operations: dict) -> bytes:
    return json.dumps({"Operations": list(operations)}).encode()


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("PATCH", "/Users/u1", patch({"op": "replace", "path": "active", "value": False})),
        ("PATCH", "/Users/u1", patch({"op": "Replace", "value": {"active": "False"}})),
        ("PUT", "/Users/u1", json.dumps({"userName": "a", "active": False}).encode()),
        ("DELETE", "/Users/u1", b""),
    ],
)
def test_a_write_that_takes_access_away_names_the_user(method, path, body) -> None:
    assert offboarded_user(method, path, body) == "u1"


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("PATCH", "/Users/u1", patch({"op": "replace", "path": "active", "value": True})),
        ("PATCH", "/Users/u1", patch({"op": "replace", "path": "displayName", "value": "x"})),
        ("PUT", "/Users/u1", json.dumps({"userName": "a", "active": True}).encode()),
        ("DELETE", "/Groups/g1", b""),
        ("POST", "/Users", json.dumps({"userName": "a", "active": False}).encode()),
        ("PATCH", "/Users/u1", b"not json"),
    ],
)
def test_other_writes_are_not_offboardings(method, path, body) -> None:
    assert offboarded_user(method, path, body) is None


def test_an_offboarding_is_sent_at_once_besides_the_coalesced_change() -> None:
    sent: list[dict] = []
    now = [0.0]
    emitter = InboxEventEmitter(60, emit=lambda **e: sent.append(e), clock=lambda: now[0])

    emitter("p", {"method": "POST", "path": "/Users", "status": 201})
    emitter("p", {"method": "PATCH", "path": "/Users/u1", "status": 200, "offboarded": "u1"})
    emitter("p", {"method": "DELETE", "path": "/Users/u2", "status": 204, "offboarded": "u2"})

    offboarded = [e for e in sent if e["event"] == OFFBOARDED_EVENT]
    assert [e["payload"]["users"] for e in offboarded] == [["u1"], ["u2"]]
    assert {e["resource"]["prefect.resource.id"] for e in offboarded} == {"usersync.profile.p"}
    # the ordinary change event is still coalesced: one now, the rest when the interval ends
    assert [e["event"] for e in sent].count(EVENT) == 1
