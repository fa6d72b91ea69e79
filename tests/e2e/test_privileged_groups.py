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

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from usersync import sync
from usersync.inbox import InboxApp, issue_token
from usersync.sandbox.push import SampleUser, ScimPusher
from usersync.sandbox.serve import Sandbox
from usersync.sandbox.server import serve
from usersync.store import Store

PROFILE = "push-hostile"
SHIPPED = Path(__file__).resolve().parents[2] / "mappings" / "demo-push"
PASSWORD = "sandbox-admin-pw"
PRODUCTS = ("jira", "confluence", "bitbucket")

EVE = SampleUser("eve", "Eve", "Attacker", "eve@example.org")
HANK = SampleUser("hank", "Hank", "Handmade", "hank@example.org")
DANA = SampleUser("dana", "Dana", "Regular", "dana@example.org")


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    mappings = tmp_path / "mappings"
    shutil.copytree(SHIPPED, mappings / PROFILE)
    store_url = f"sqlite:///{tmp_path / 'store.db'}"
    store = Store.open(store_url)
    token = issue_token(store.engine, PROFILE).token
    with Sandbox(admin_password=PASSWORD) as sandbox, serve(InboxApp(store.engine)) as inbox:
        monkeypatch.setenv("USERSYNC_MAPPINGS_DIR", str(mappings))
        monkeypatch.setenv("USERSYNC_STORE_URL", store_url)
        for product in PRODUCTS:
            monkeypatch.setenv(f"USERSYNC_DEMO_{product.upper()}_URL", sandbox.url(product))
            monkeypatch.setenv(f"USERSYNC_DEMO_{product.upper()}_PASSWORD", PASSWORD)
        yield {
            "store": store,
            "sandbox": sandbox,
            "inbox": f"{inbox}/scim/v2/{PROFILE}",
            "token": token,
        }
    store.close()


def _sync(store: Store) -> dict[str, sync.TargetPlan]:
    """One sync of every target through the engine's steps; the plans it carried out."""
    loaded = sync.load(PROFILE)
    snapshot = sync.extract(loaded)
    plans = {}
    for name in PRODUCTS:
        desired = sync.transform(loaded, snapshot, name)
        with sync.open_target_for(loaded, name) as target:
            plan = sync.plan_target_sync(loaded, name, target, desired, store)
            run_id = store.start_run(PROFILE, name, dry_run=False)
            store.record_plan(run_id, plan.plan)
            result = sync.load_target_sync(loaded, target, plan, store, run_id)
        assert result.status == "succeeded", (name, result.outcomes)
        plans[name] = plan
    return plans


def _get(world: dict[str, Any], product: str, path: str, **params: Any) -> httpx.Response:
    roots = {"jira": "/rest/api/2", "confluence": "/rest/api", "bitbucket": "/rest/api/1.0"}
    return httpx.get(
        world["sandbox"].url(product) + roots[product] + path,
        params=params,
        auth=("admin", PASSWORD),
        timeout=10,
    )


def jira_members(world: dict[str, Any], group: str) -> set[str]:
    response = _get(world, "jira", "/group/member", groupname=group, includeInactiveUsers="true")
    if response.status_code == 404:
        return set()
    return {m["name"] for m in response.raise_for_status().json()["values"]}


def confluence_members(world: dict[str, Any], group: str) -> set[str]:
    response = _get(world, "confluence", f"/group/{group}/member", limit=200)
    if response.status_code == 404:
        return set()
    return {m["username"] for m in response.raise_for_status().json()["results"]}


def bitbucket_members(world: dict[str, Any], group: str) -> set[str]:
    response = _get(world, "bitbucket", "/admin/groups/more-members", context=group, limit=100)
    return {m["name"] for m in response.raise_for_status().json()["values"]}


def jira_active(world: dict[str, Any], name: str) -> bool:
    return bool(_get(world, "jira", "/user", username=name).raise_for_status().json()["active"])


def confluence_active(world: dict[str, Any], name: str) -> bool:
    return world["sandbox"].emulators["confluence"].users[name].active


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
        "jira": jira_members(world, "jira-administrators"),
        "confluence": confluence_members(world, "confluence-administrators"),
        "bitbucket": bitbucket_members(world, "bb-admins"),
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
        for group, members in hostile.items():
            pusher.push_group(group)
            pusher.add_members(group, members)

    plans = _sync(world["store"])

    assert jira_members(world, "jira-administrators") == admins_before["jira"]
    assert jira_members(world, "jira-system-administrators") == set()
    assert confluence_members(world, "confluence-administrators") == admins_before["confluence"]
    assert confluence_members(world, "wiki-admins") == set()
    assert bitbucket_members(world, "bb-admins") == admins_before["bitbucket"]
    assert "eve" not in jira_members(world, "finance")  # hand-made group, not taken over
    assert jira_members(world, "fresh-team") == {"dana"}  # usersync's own group
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
    again = _sync(world["store"])
    assert {name: plan.counts() for name, plan in again.items()} == {p: {} for p in PRODUCTS}


def test_a_managed_account_made_admin_by_hand_is_still_deprovisioned(world) -> None:
    sandbox = world["sandbox"]
    with ScimPusher(world["inbox"], world["token"]) as pusher:
        pusher.push_user(EVE)
        pusher.push_user(DANA)
    _sync(world["store"])
    # An administrator makes the managed account an admin in every product.
    sandbox.emulators["jira"].grant_admin("eve")
    sandbox.emulators["confluence"].grant_admin("eve")
    sandbox.emulators["bitbucket"].grant_admin("eve")

    with ScimPusher(world["inbox"], world["token"]) as pusher:
        pusher.set_active("eve", False)
    plans = _sync(world["store"])

    for product in PRODUCTS:
        assert plans[product].counts().get("deactivate_user") == 1, product
    assert not jira_active(world, "eve")
    assert not confluence_active(world, "eve")
    licensed = _get(world, "bitbucket", "/admin/permissions/users", filter="eve").json()["values"]
    assert all(v["permission"] != "LICENSED_USER" for v in licensed)
    assert jira_active(world, "dana")
