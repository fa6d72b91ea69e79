"""The group settings and lead hand-over as an administrator expects them (issue 24), end to end.

Each scenario pushes people into a real SCIM inbox, syncs the three sandbox products through
the engine's steps, and reads the products back over REST; the expectations come from the
settings' documented meaning (README, Settings in full), and every scenario's rerun writes
nothing:

- `keep_existing_groups: false` removes memberships in groups no rule maps, but never from the
  groups that grant access to the product (Jira application roles' groups, Confluence "Can use",
  Bitbucket licensing groups), and leaves an account adopted in this very run as the rules say;
- `create_missing: false` skips only the missing group's memberships, reported once with the
  number waiting on it; memberships of groups that exist go through;
- a new Jira account is in the default role's group by creation: no add is sent for it;
- a leaver who leads only a component, with no default lead, is deactivated once the
  component is handed to its project's lead.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from usersync_sandbox.push import SampleUser, ScimPusher

from tests.e2e.products import PRODUCTS, members, products_world, rest, sync_all

HEADER = "source_group,target_group,mode,targets\n"
ANN = SampleUser("ann", "Ann", "Able", "ann@example.org")
BEN = SampleUser("ben", "Ben", "Baker", "ben@example.org")
HANK = SampleUser("hank", "Hank", "Handmade", "hank@example.org")
ACCESS = {
    "jira": "jira-software-users",
    "confluence": "confluence-users",
    "bitbucket": "stash-users",
}


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    with products_world(tmp_path, monkeypatch) as world:
        yield world


def configure(world: dict[str, Any], groups_csv: str, **group_settings: Any) -> None:
    folder: Path = world["profile_dir"]
    (folder / "groups.csv").write_text(HEADER + groups_csv, encoding="utf-8")
    profile = yaml.safe_load((folder / "profile.yaml").read_text("utf-8"))
    profile["settings"]["groups"] = group_settings
    (folder / "profile.yaml").write_text(yaml.safe_dump(profile), encoding="utf-8")


def push(world: dict[str, Any], users: list[SampleUser], groups: dict[str, list[str]]) -> None:
    with ScimPusher(world["inbox"], world["token"]) as pusher:
        for user in users:
            pusher.push_user(user)
        for group, names in groups.items():
            pusher.push_group(group)
            pusher.add_members(group, names)


def seed_everywhere(world: dict[str, Any], group: str, names: list[str] = ()) -> None:
    for product in PRODUCTS:
        world["sandbox"].emulators[product].seed_group(group, names)


def test_keep_existing_groups_false_never_strips_application_access(world) -> None:
    seed_everywhere(world, "developers")
    configure(world, "engineering,developers,manual\n", keep_existing_groups=False)
    push(world, [ANN, BEN], {"engineering": ["ann", "ben"]})
    sync_all(world["store"])
    bitbucket = world["sandbox"].emulators["bitbucket"]
    for user in ("ann", "ben"):  # Bitbucket: created without the default group; put it there
        bitbucket.seed_group(ACCESS["bitbucket"], [user], permission="LICENSED_USER")
    for product in PRODUCTS:
        world["sandbox"].emulators[product].seed_group("old-team", ["ann"])
    assert {"ann", "ben"} <= members(world, "jira", ACCESS["jira"])  # Jira's own default

    plans = sync_all(world["store"])

    for product in PRODUCTS:
        assert {"ann", "ben"} <= members(world, product, ACCESS[product]), product
        assert "ann" not in members(world, product, "old-team"), product
        removed = plans[product].plan.loc[plans[product].plan["op"] == "remove_membership"]
        assert set(removed["group"]) == {"old-team"}, product
    again = sync_all(world["store"])
    assert {n: p.counts() for n, p in again.items()} == {p: {} for p in PRODUCTS}


def test_keep_existing_groups_false_settles_an_adopted_account_in_one_run(world) -> None:
    seed_everywhere(world, "developers")
    seed_everywhere(world, "old-team")
    jira = world["sandbox"].emulators["jira"]
    jira.seed_user(HANK.user_name, HANK.email, "Hank Handmade")
    jira.seed_group("old-team", ["hank"])
    jira.seed_group("jira-software-users", ["hank"])
    configure(world, "engineering,developers,manual\n", keep_existing_groups=False)
    push(world, [HANK], {"engineering": ["hank"]})

    plans = sync_all(world["store"], ("jira",))

    assert plans["jira"].counts().get("adopt_user") == 1
    assert "hank" in members(world, "jira", "developers")
    assert "hank" not in members(world, "jira", "old-team")  # the first run already
    assert "hank" in members(world, "jira", "jira-software-users")  # access stays
    assert sync_all(world["store"], ("jira",))["jira"].counts() == {}


def test_create_missing_false_skips_only_the_missing_group(world) -> None:
    seed_everywhere(world, "developers")
    configure(
        world,
        "engineering,developers,manual\n*,,on-the-fly\n",
        create_missing=False,
    )
    push(world, [ANN, BEN], {"engineering": ["ann", "ben"], "nowhere": ["ann", "ben"]})

    plans = sync_all(world["store"])

    for product in PRODUCTS:
        assert members(world, product, "developers") == {"ann", "ben"}, product
        assert members(world, product, "nowhere") == set(), product
        reasons = [r for r in plans[product].conflicts["reason"] if "'nowhere'" in r]
        assert len(reasons) == 1 and "2 membership(s) skipped" in reasons[0], product
    again = sync_all(world["store"])
    assert {n: p.counts() for n, p in again.items()} == {p: {} for p in PRODUCTS}


def test_a_new_jira_account_is_not_added_to_the_group_jira_gave_it(world) -> None:
    # The shipped demo-push rules put every Jira user in jira-software-users (a default rule).
    push(world, [ANN], {})
    plans = sync_all(world["store"], ("jira",))
    adds = plans["jira"].plan.loc[plans["jira"].plan["op"] == "add_membership"]
    assert "jira-software-users" not in set(adds["group"])
    assert "ann" in members(world, "jira", "jira-software-users")
    writes = world["sandbox"].emulators["jira"].app.writes()
    assert [r for r in writes if r.status >= 400] == []  # nothing the product refused


def test_a_component_lead_without_a_default_lead_goes_once_the_project_lead_takes_it(
    world,
) -> None:
    push(world, [ANN, BEN], {})
    sync_all(world["store"], ("jira",))
    jira = world["sandbox"].emulators["jira"]
    jira.seed_project("XYZ", "Xylo", lead="admin")
    component = jira.seed_component("XYZ", "Backend", lead="ben")
    with ScimPusher(world["inbox"], world["token"]) as pusher:
        pusher.set_active("ben", False)

    plans = sync_all(world["store"], ("jira",))

    assert plans["jira"].counts() == {"reassign_lead": 1, "deactivate_user": 1}
    assert jira.component_lead(component) == "admin"
    assert rest(world, "jira", "/user", username="ben").json()["active"] is False
