"""Group sync settings, from a source snapshot through groups.csv and the settings to a plan.

Each expectation is written out by hand from the source state and the rule being tested.
"""

from __future__ import annotations

import pandas as pd
import pytest

from usersync.config import GroupSyncSettings, SyncSettings
from usersync.errors import ConfigError
from usersync.mapping import MappingTables, desired_state, parse_attributes, parse_groups
from usersync.model import (
    LEDGER_COLUMNS,
    TARGET_GROUP_COLUMNS,
    TARGET_MEMBERSHIP_COLUMNS,
    TARGET_USER_COLUMNS,
    SourceSnapshot,
    TargetState,
    conform,
    empty_frame,
)
from usersync.plan import PlanInput, plan_changes

ATTRIBUTES = "target,source\nusername,uid\nemail,mail\ndisplay_name,cn\n"
HEADER = "source_group,target_group,mode,targets,create,keep_existing_users\n"


def snapshot(memberships: dict[str, list[str]], users=("alice", "bob")) -> SourceSnapshot:
    """Users uid=name (id s-name), all active; memberships: source group → uids."""
    people = pd.DataFrame(
        {
            "source_id": [f"s-{u}" for u in users],
            "locator": [f"uid={u}" for u in users],
            "active": [True] * len(users),
            "uid": list(users),
            "mail": [f"{u}@corp" for u in users],
            "cn": [u.title() for u in users],
        }
    ).astype({"active": "boolean"})
    groups = pd.DataFrame(
        {"source_group_id": list(memberships), "source_group": list(memberships)}, dtype="string"
    )
    rows = [(f"s-{u}", g) for g, members in memberships.items() for u in members]
    members = pd.DataFrame(rows, columns=["source_id", "source_group"], dtype="string")
    return SourceSnapshot(people, groups, members)


def target(users=(), memberships=(), groups=()) -> TargetState:
    def frame(columns, rows):
        if not rows:
            return empty_frame(columns)
        return conform(pd.DataFrame(list(rows), columns=list(columns)), columns, what="test")

    return TargetState(
        users=frame(
            TARGET_USER_COLUMNS, [[f"K-{u}", u, f"{u}@corp", u.title(), True] for u in users]
        ),
        groups=frame(TARGET_GROUP_COLUMNS, [[g] for g in groups]),
        memberships=frame(TARGET_MEMBERSHIP_COLUMNS, list(memberships)),
    )


def managed(*users: str, groups=()) -> pd.DataFrame:
    rows = [["user", f"s-{u}", f"K-{u}", u, "created"] for u in users]
    rows += [["group", "", g, g, "created"] for g in groups]
    if not rows:
        return empty_frame(LEDGER_COLUMNS)
    return conform(pd.DataFrame(rows, columns=list(LEDGER_COLUMNS)), LEDGER_COLUMNS, what="test")


def plan(
    rules: str,
    source: SourceSnapshot,
    actual: TargetState,
    ledger: pd.DataFrame | None = None,
    protected=(),
    foreign_names=(),
    **groups,
):
    settings = SyncSettings(groups=GroupSyncSettings(**groups))
    tables = MappingTables(parse_attributes(ATTRIBUTES), parse_groups(HEADER + rules))
    desired = desired_state(source, tables, "jira", groups_settings=settings.groups)
    changes = plan_changes(
        PlanInput(
            "jira",
            desired,
            actual,
            ledger if ledger is not None else managed(),
            settings,
            protected=tuple(protected),
            foreign_names=frozenset(foreign_names),
        )
    )
    return changes


def ops(changes) -> set[tuple[str, str, str]]:
    p = changes.operations
    return {(r.op, r.username, r.group) for r in p.itertuples()}


def test_include_and_exclude_filters_choose_the_source_groups_every_rule_sees():
    source = snapshot({"APP-jira": ["alice"], "APP-test": ["bob"], "hr": ["bob"]})
    changes = plan(
        "*,,on-the-fly,,,\n",
        source,
        target(),
        include=["^app-"],  # case-insensitive
        exclude=["-test$"],
    )
    groups = {g for op, _, g in ops(changes) if op == "create_group"}
    assert groups == {"APP-jira"}


def test_on_the_fly_rename_by_regular_expression():
    source = snapshot({"APP-jira": ["alice"], "staff": ["bob"]})
    changes = plan("*,,on-the-fly,,,\n", source, target(), rename_pattern="^APP-(.+)$")
    assert {g for op, _, g in ops(changes) if op == "add_membership"} == {"jira", "staff"}


def test_missing_on_the_fly_groups_are_reported_and_skipped_when_not_created():
    source = snapshot({"dev": ["alice"], "ops": ["bob"]})
    actual = target(["alice", "bob"], groups=["ops"])
    changes = plan(
        "*,,on-the-fly,,,\n",
        source,
        actual,
        managed("alice", "bob", groups=["ops"]),  # usersync created ops in an earlier run
        create_missing=False,
    )
    assert ops(changes) == {("add_membership", "bob", "ops")}
    (reason,) = [r for r in changes.conflicts["reason"] if "'dev'" in r]
    assert "not created" in reason and "1 membership(s) skipped" in reason


def test_manual_rule_maps_only_onto_an_existing_group_with_create_no():
    source = snapshot({"jira-users": ["alice"]}, users=("alice",))
    changes = plan(
        "jira-users,jira-software-users,manual,,no,\n", source, target(["alice"]), managed("alice")
    )
    assert ops(changes) == set()
    assert any("jira-software-users" in r for r in changes.conflicts["reason"])


def test_manual_rule_imports_the_group_by_default():
    source = snapshot({"jira-users": ["alice"]}, users=("alice",))
    changes = plan(
        "jira-users,jira-software-users,manual,,,\n", source, target(["alice"]), managed("alice")
    )
    assert ops(changes) == {
        ("create_group", "", "jira-software-users"),
        ("add_membership", "alice", "jira-software-users"),
    }


def test_keep_existing_groups_leaves_unmapped_groups_alone_by_default_or_removes_them():
    source = snapshot({"dev": ["alice"]}, users=("alice",))
    actual = target(["alice"], [("alice", "dev"), ("alice", "legacy")], ["dev", "legacy"])
    kept = plan("dev,dev,manual,,,\n", source, actual, managed("alice"))
    assert ops(kept) == set()

    removed = plan(
        "dev,dev,manual,,,\n", source, actual, managed("alice"), keep_existing_groups=False
    )
    assert ops(removed) == {("remove_membership", "alice", "legacy")}


def test_keep_existing_groups_false_touches_only_managed_accounts():
    source = snapshot({"dev": ["alice"]}, users=("alice",))
    actual = target(["alice", "zed"], [("zed", "legacy")], ["dev", "legacy"])
    changes = plan(
        "dev,dev,manual,,,\n", source, actual, managed("alice"), keep_existing_groups=False
    )
    assert ops(changes) == {("add_membership", "alice", "dev")}


def test_keep_existing_users_no_removes_unlisted_members_but_not_protected_or_foreign_ones():
    source = snapshot({"jira-users": ["alice"]}, users=("alice",))
    actual = target(
        ["alice"],
        [
            ("alice", "jira-software-users"),
            ("stranger", "jira-software-users"),
            ("admin", "jira-software-users"),
            ("contractor", "jira-software-users"),
        ],
        ["jira-software-users"],
    )
    rule = "jira-users,jira-software-users,manual,,,no\n"
    changes = plan(
        rule, source, actual, managed("alice"), protected=["admin"], foreign_names=["contractor"]
    )
    assert ops(changes) == {("remove_membership", "stranger", "jira-software-users")}

    kept = plan(
        rule.replace(",no\n", ",\n"),
        source,
        actual,
        managed("alice"),
        protected=["admin"],
        foreign_names=["contractor"],
    )
    assert ops(kept) == set()


def test_default_groups_for_new_users_are_joined_once_and_never_enforced():
    source = snapshot({}, users=("alice", "bob"))
    rules = ",welcome,default-new,,,\n,everyone,default,,,\n"
    # bob is new; alice is managed and left "welcome" by hand.
    actual = target(["alice"], [("alice", "everyone")], ["welcome", "everyone"])
    changes = plan(rules, source, actual, managed("alice", groups=["everyone"]))
    assert ops(changes) == {
        ("create_user", "bob", ""),
        ("add_membership", "bob", "welcome"),
        ("add_membership", "bob", "everyone"),
    }
    # Someone removed from "welcome" by hand stays out; someone in it stays in.
    actual = target(
        ["alice", "bob"], [("alice", "everyone"), ("bob", "everyone")], ["welcome", "everyone"]
    )
    assert ops(plan(rules, source, actual, managed("alice", "bob", groups=["everyone"]))) == set()


def test_default_groups_for_new_users_when_no_account_stays():
    # alice's account is protected: nobody is created or managed, so nobody joins anything.
    source = snapshot({}, users=("alice",))
    rules = ",welcome,default-new,,,\n"
    actual = target(["alice"], [], ["welcome"])
    assert ops(plan(rules, source, actual, protected=["alice"])) == set()


def test_a_manual_rule_wins_over_the_on_the_fly_star_for_its_source_group():
    source = snapshot({"jira-users": ["alice"], "dev": ["alice"]}, users=("alice",))
    rules = "jira-users,jira-software-users,manual,,,\n*,,on-the-fly,,,\n"
    changes = plan(rules, source, target(["alice"]), managed("alice"))
    joined = {g for op, _, g in ops(changes) if op == "add_membership"}
    assert joined == {"jira-software-users", "dev"}  # no group called "jira-users"

    # An on-the-fly row naming the group explicitly still applies beside the manual one.
    rules += "jira-users,,on-the-fly,,,\n"
    changes = plan(rules, source, target(["alice"]), managed("alice"))
    joined = {g for op, _, g in ops(changes) if op == "add_membership"}
    assert joined == {"jira-software-users", "dev", "jira-users"}


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("dev,,on-the-fly,,no,\n", "create applies to manual rules only"),
        ("dev,dev,manual,,maybe,\n", "create must be yes or no"),
        ("dev,x,default-new,,,\n", "a default-new rule names only target_group"),
    ],
)
def test_group_rule_columns_are_validated_with_file_and_line(row, message):
    with pytest.raises(ConfigError, match=message) as caught:
        parse_groups(HEADER + row, "groups.csv")
    assert "groups.csv line 2" in str(caught.value)


def test_group_settings_patterns_are_validated():
    with pytest.raises(ValueError, match="invalid regular expression"):
        GroupSyncSettings(include=["(unclosed"])
