"""Data a product refuses never turns every run red (issue 22), end to end through the inbox.

- What the client knows a product refuses (a Confluence display name with `<` or `>`; a group
  name with `/` while Confluence's Remote API is off) is a rejected row at plan time: nothing
  is sent, the run succeeds, and it is listed once.
- What the client did not predict (the product answers 4xx about one user's data) marks that
  user rejected for that product: the run still succeeds, and the next run does not send it
  again until the user's data changes.
- A Confluence licence reported as unlimited by -1 or by MAX_VALUE provisions everyone.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from usersync_sandbox.push import SampleUser, ScimPusher

from tests.e2e.products import members, products_world, rest, sync_all

ANN = SampleUser("ann", "Ann", "Able", "ann@example.org")
ODD = SampleUser("odd", "Odd <script>", "Name", "odd@example.org")
BAD_MAIL = SampleUser("mallory", "Mal", "Formed", "not-an-address")


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    with products_world(tmp_path, monkeypatch) as world:
        yield world


def confluence_user(world: dict[str, Any], name: str) -> dict | None:
    response = rest(world, "confluence", "/user", username=name)
    return None if response.status_code == 404 else response.raise_for_status().json()


def writes(world: dict[str, Any]) -> list:
    """Write requests to Confluence (JSON-RPC getUser is a read sent as a POST)."""
    log = world["sandbox"].emulators["confluence"].app.writes()
    return [r for r in log if not r.path.endswith("/getUser")]


def test_refusals_known_at_plan_time_are_listed_and_never_sent(world) -> None:
    with ScimPusher(world["inbox"], world["token"]) as pusher:
        for user in (ANN, ODD):
            pusher.push_user(user)
        pusher.push_group("ops/infra")
        pusher.add_members("ops/infra", ["ann"])

    plans = sync_all(world["store"], ("confluence",))

    plan = plans["confluence"]
    assert confluence_user(world, "ann") is not None
    assert confluence_user(world, "odd") is None
    reasons = " ".join(plan.desired.rejected["reason"])
    assert reasons.count("refuses < and > in a display name") == 1
    assert "ops/infra" not in " ".join(plan.desired.groups["group"])
    assert not any("ops/infra" in str(r.path) for r in writes(world))
    world["sandbox"].emulators["confluence"].app.clear_log()

    again = sync_all(world["store"], ("confluence",))["confluence"]
    assert again.counts() == {}
    assert writes(world) == []


def test_a_refusal_nobody_predicted_is_remembered_until_the_data_changes(world) -> None:
    with ScimPusher(world["inbox"], world["token"]) as pusher:
        pusher.push_user(ANN)
        pusher.push_user(BAD_MAIL)

    first = sync_all(world["store"], ("confluence",))  # asserts the run succeeded
    assert first["confluence"].counts()["create_user"] == 2  # tried once
    assert confluence_user(world, "mallory") is None
    world["sandbox"].emulators["confluence"].app.clear_log()

    second = sync_all(world["store"], ("confluence",))["confluence"]
    assert second.counts() == {}  # not sent again
    assert writes(world) == []
    (reason,) = [
        r for r in second.desired.rejected["reason"] if "refused by the product on an earlier" in r
    ]
    assert "not-an-address" in reason

    fixed = SampleUser("mallory", "Mal", "Formed", "mallory@example.org")
    with ScimPusher(world["inbox"], world["token"]) as pusher:
        pusher.push_user(fixed)
    third = sync_all(world["store"], ("confluence",))["confluence"]
    assert third.counts().get("create_user") == 1
    assert confluence_user(world, "mallory") is not None


@pytest.mark.parametrize("marker", [-1, 2**31 - 1], ids=["minus-one", "MAX_VALUE"])
def test_an_unlimited_confluence_licence_provisions_everyone(world, marker: int) -> None:
    world["sandbox"].emulators["confluence"].unlimited_max_users = marker
    people = [SampleUser(f"user{i}", "User", str(i), f"user{i}@example.org") for i in range(12)]
    with ScimPusher(world["inbox"], world["token"]) as pusher:
        for person in people:
            pusher.push_user(person)

    plan = sync_all(world["store"], ("confluence",))["confluence"]

    assert plan.seats["known"] and plan.seats["free"] is None
    assert plan.counts()["create_user"] == 12
    assert {p.user_name for p in people} <= members(world, "confluence", "confluence-users")
