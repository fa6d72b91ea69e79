"""The privileged-groups hole, end to end: SCIM push → sync → the admin groups read over REST.

An IdP (here pushed into the real inbox as miniOrange would) holds groups named like each
product's administrator groups, and the profile maps every source group on the fly (as the
shipped `demo-push` does). Nobody the push names may become an administrator of Jira,
Confluence or Bitbucket, neither a new account nor an adopted hand-made one; a group that
exists in a product and that usersync did not create is not taken over; and an account
usersync manages that an administrator later made an admin by hand is still deactivated when
the IdP disables it. Every expectation is read back from the products' own REST APIs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from usersync_sandbox.push import SampleUser, ScimPusher

from tests.e2e.products import PRODUCTS, members, products_world, rest, sync_all

EVE = SampleUser("eve", "Eve", "Attacker", "eve@example.org")
HANK = SampleUser("hank", "Hank", "Handmade", "hank@example.org")
DANA = SampleUser("dana", "Dana", "Regular", "dana@example.org")


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    with products_world(tmp_path, monkeypatch) as world:
        yield world


def jira_active(world: dict[str, Any], name: str) -> bool:
    return bool(rest(world, "jira", "/user", username=name).raise_for_status().json()["active"])


def test_pushed_groups_named_like_admin_groups_make_nobody_an_administrator(world) -> None:
    sandbox = world["sandbox"]
    jira, confluence, bitbucket = (sandbox.emulators[p] for p in PRODUCTS)
    # A hand-made account the IdP also has (same e-mail: adopted under the default policy).
    jira.seed_user(HANK.user_name, HANK.email, "Hank Handmade")
    # Groups that grant administration under site-specific names, and a hand-made team group.
    confluence.seed_admin_group("wiki-admins")
    bitbucket.seed_admin_group("bb-admins")
    jira.seed_group("finance")
    admins_before = {
        "jira": members(world, "jira", "jira-administrators"),
        "confluence": members(world, "confluence", "confluence-administrators"),
        "bitbucket": members(world, "bitbucket", "bb-admins"),
    }
    with ScimPusher(world["inbox"], world["token"]) as pusher:
        for user in (EVE, HANK, DANA):
            pusher.push_user(user)
        hostile = {
            "jira-administrators": ["eve", "hank"],
            "jira-system-administrators": ["eve"],
            "confluence-administrators": ["eve", "hank"],
            "wiki-admins": ["eve"],
            "bb-admins": ["eve"],
            "finance": ["eve"],
            "fresh-team": ["dana"],
        }
        for group, names in hostile.items():
            pusher.push_group(group)
            pusher.add_members(group, names)

    plans = sync_all(world["store"])

    assert members(world, "jira", "jira-administrators") == admins_before["jira"]
    assert members(world, "jira", "jira-system-administrators") == set()
    assert members(world, "confluence", "confluence-administrators") == admins_before["confluence"]
    assert members(world, "confluence", "wiki-admins") == set()
    assert members(world, "bitbucket", "bb-admins") == admins_before["bitbucket"]
    assert "eve" not in members(world, "jira", "finance")  # hand-made group, not taken over
    assert members(world, "jira", "fresh-team") == {"dana"}  # usersync's own group
    assert jira_active(world, "eve") and jira_active(world, "hank")
    for product in ("jira", "confluence"):
        text = " ".join(plans[product].conflicts["reason"])
        assert "grants administration" in text, product
        assert plans[product].alerts
    assert "'bb-admins' grants administration" in " ".join(plans["bitbucket"].conflicts["reason"])
    assert "'finance' exists in the product and usersync did not create it" in " ".join(
        plans["jira"].conflicts["reason"]
    )

    # The rerun plans nothing new: refusals are listed again, never attempted.
    again = sync_all(world["store"])
    assert {name: plan.counts() for name, plan in again.items()} == {p: {} for p in PRODUCTS}


def test_a_managed_account_made_admin_by_hand_is_still_deprovisioned(world) -> None:
    sandbox = world["sandbox"]
    with ScimPusher(world["inbox"], world["token"]) as pusher:
        pusher.push_user(EVE)
        pusher.push_user(DANA)
    sync_all(world["store"])
    # An administrator makes the managed account an admin in every product.
    sandbox.emulators["jira"].grant_admin("eve")
    sandbox.emulators["confluence"].grant_admin("eve")
    sandbox.emulators["bitbucket"].grant_admin("eve")

    with ScimPusher(world["inbox"], world["token"]) as pusher:
        pusher.set_active("eve", False)
    plans = sync_all(world["store"])

    for product in PRODUCTS:
        assert plans[product].counts().get("deactivate_user") == 1, product
    assert not jira_active(world, "eve")
    assert not sandbox.emulators["confluence"].users["eve"].active
    licensed = rest(world, "bitbucket", "/admin/permissions/users", filter="eve").json()["values"]
    assert all(v["permission"] != "LICENSED_USER" for v in licensed)
    assert jira_active(world, "dana")
