"""Delta runs (issue 26), end to end: push into the inbox, sync the three sandbox products,
read them back over REST, and count what each run asked the products.

The oracle is the source as pushed and the rules alone: after any run, each product holds the
sample people as the source has them now; a delta run reads only what changed and writes what
a reconcile run would; a delta run that cannot trust what was written reconciles and says why.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from usersync_sandbox.push import SampleUser, ScimPusher

from tests.e2e.products import PASSWORD, PRODUCTS, members, products_world, rest, sync_all

PEOPLE = [
    SampleUser(f"user{i:02d}", f"Given{i}", f"Family{i}", f"user{i:02d}@example.org")
    for i in range(12)
]
#: source group -> its members (the demo-push mapping: engineering -> developers, the rest
#: on the fly)
GROUPS = {
    "engineering": [p.user_name for p in PEOPLE[:6]],
    "sales": [p.user_name for p in PEOPLE[6:]],
}


#: Products whose client reads e-mail addresses in the sandbox (Confluence's needs the Remote
#: API, off by default: it neither compares nor writes them)
EMAIL_READABLE = ("jira", "bitbucket")


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    with products_world(tmp_path, monkeypatch) as world:
        with ScimPusher(world["inbox"], world["token"]) as pusher:
            for person in PEOPLE:
                pusher.push_user(person)
            for group, names in GROUPS.items():
                pusher.push_group(group)
                pusher.add_members(group, names)
        yield world


def requests(world: dict[str, Any]) -> dict[str, int]:
    """Requests each product answered since the last `forget_requests`."""
    return {p: len(world["sandbox"].emulators[p].app.requests) for p in PRODUCTS}


def forget_requests(world: dict[str, Any]) -> None:
    for product in PRODUCTS:
        world["sandbox"].emulators[product].app.clear_log()


def account(world: dict[str, Any], product: str, name: str) -> dict[str, Any]:
    """An account's e-mail address and whether it may sign in, read over REST."""
    if product == "jira":
        body = rest(world, "jira", "/user", username=name).raise_for_status().json()
        return {"email": body["emailAddress"], "active": body["active"]}
    if product == "confluence":
        body = (
            rest(world, "confluence", "/user", username=name, expand="status,details.personal")
            .raise_for_status()
            .json()
        )
        email = (body.get("details") or {}).get("personal", {}).get("email")
        return {"email": email, "active": body["status"] == "Active"}
    body = rest(world, "bitbucket", f"/users/{name}").raise_for_status().json()
    grants = rest(world, "bitbucket", "/admin/permissions/users", filter=name).json()["values"]
    licensed = any(g["user"]["name"] == name and g["permission"] == "LICENSED_USER" for g in grants)
    return {"email": body["emailAddress"], "active": licensed}


def test_the_first_delta_run_reconciles_and_an_unchanged_one_asks_almost_nothing(world) -> None:
    first = sync_all(world["store"], mode="delta")
    for product in PRODUCTS:
        assert first[product].mode == "reconcile"
        assert "nothing was written" in (first[product].mode_reason or "")
        assert members(world, product, "developers") >= set(GROUPS["engineering"])
    forget_requests(world)

    again = sync_all(world["store"], mode="delta")

    for product in PRODUCTS:
        assert again[product].mode == "delta" and again[product].mode_reason is None
        assert again[product].counts() == {}
    # the version read (and nothing else) per product, whatever the directory's size
    assert all(n <= 2 for n in requests(world).values()), requests(world)
    assert not any(world["sandbox"].emulators[p].app.writes() for p in PRODUCTS)


def test_a_delta_run_reads_and_writes_only_what_changed(world) -> None:
    sync_all(world["store"], mode="reconcile")
    changed = SampleUser("user03", "Given3", "Family3", "new-03@example.org")
    with ScimPusher(world["inbox"], world["token"]) as pusher:
        pusher.push_user(changed)
        pusher.set_active("user04", False)
        pusher.remove_member("sales", "user07")
    forget_requests(world)

    plans = sync_all(world["store"], mode="delta")

    for product in PRODUCTS:
        plan = plans[product]
        assert plan.mode == "delta", plan.mode_reason
        assert plan.counts().get("deactivate_user") == 1
        assert plan.counts().get("remove_membership") == 1
        assert account(world, product, "user04")["active"] is False
        if product in EMAIL_READABLE:  # the sandbox Confluence's Remote API is off, as shipped
            assert plan.counts().get("update_user") == 1
            assert account(world, product, "user03")["email"] == "new-03@example.org"
        assert "user07" not in members(world, product, "sales")
        assert "user06" in members(world, product, "sales")
    asked = requests(world)
    # three accounts and one group read, a handful written: not the 12 people and 2 groups
    assert all(n < 40 for n in asked.values()), asked
    forget_requests(world)
    assert all(sync_all(world["store"], mode="delta")[p].counts() == {} for p in PRODUCTS)


def test_a_delta_run_that_finds_a_hand_made_change_reconciles_and_says_why(world) -> None:
    sync_all(world["store"], mode="reconcile")
    # deactivated by hand in Jira, as an administrator would over REST
    httpx.put(
        world["sandbox"].url("jira") + "/rest/api/2/user",
        params={"username": "user05"},
        json={"active": False},
        auth=("admin", PASSWORD),
        timeout=10,
    ).raise_for_status()
    assert account(world, "jira", "user05")["active"] is False
    with ScimPusher(world["inbox"], world["token"]) as pusher:
        pusher.push_user(SampleUser("user05", "Given5", "Family5", "moved-05@example.org"))

    plans = sync_all(world["store"], ("jira",), mode="delta")

    plan = plans["jira"]
    assert plan.mode == "reconcile"
    assert "user05" in (plan.mode_reason or "") and "by hand" in (plan.mode_reason or "")
    assert account(world, "jira", "user05") == {"email": "moved-05@example.org", "active": True}


def test_a_delta_run_reconciles_once_the_last_reconcile_is_too_old(world) -> None:
    sync_all(world["store"], ("bitbucket",), mode="reconcile")
    profile = world["profile_dir"] / "profile.yaml"
    text = profile.read_text()
    profile.write_text(
        text.replace("  precedence: 2", "  precedence: 2\n  reconcile_interval_hours: 0.00001")
    )

    plan = sync_all(world["store"], ("bitbucket",), mode="delta")["bitbucket"]

    assert plan.mode == "reconcile"
    # the settings changed too (a new interval): either reason is a reason to read everything
    assert plan.mode_reason and (
        "reconcile_interval_hours" in plan.mode_reason or "settings" in plan.mode_reason
    )
    again = sync_all(world["store"], ("bitbucket",), mode="delta")["bitbucket"]
    assert again.mode == "reconcile" and "reconcile_interval_hours" in (again.mode_reason or "")


def test_a_new_member_and_a_new_person_arrive_by_delta(world) -> None:
    sync_all(world["store"], mode="reconcile")
    newcomer = SampleUser("newbie", "New", "Comer", "newbie@example.org")
    with ScimPusher(world["inbox"], world["token"]) as pusher:
        pusher.push_user(newcomer)
        pusher.add_members("engineering", ["newbie", "user09"])

    plans = sync_all(world["store"], mode="delta")

    for product in PRODUCTS:
        assert plans[product].mode == "delta", plans[product].mode_reason
        assert {"newbie", "user09"} <= members(world, product, "developers")
        assert account(world, product, "newbie")["active"] is True
        if product in EMAIL_READABLE:
            assert account(world, product, "newbie")["email"] == "newbie@example.org"
