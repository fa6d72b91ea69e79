"""IdP data never grants product privileges, and identity decisions fail closed (issue 21).

Each expectation is written by hand from the rule it checks (README, Safety rules):
- no rule (on-the-fly, manual, default) creates or fills a group that grants administration,
  unless `settings.groups.allow_privileged_groups` names it; a refusal is a listed conflict
  and an alert;
- an on-the-fly rule lands only on groups usersync created; an existing group needs a rule
  that names it;
- an administrator is never adopted or relinked; when administrators cannot be established,
  nobody is; a managed account is deprovisioned when its identity leaves, admin or not; only
  protected accounts are held back, and that is a conflict and an alert;
- a new identity relinks to a departed namesake's account only as the adoption policy allows.
"""

from __future__ import annotations

import pandas as pd

from tests.test_group_settings import ATTRIBUTES, HEADER, managed, ops, snapshot, target
from usersync.config import GroupSyncSettings, SyncSettings
from usersync.mapping import MappingTables, desired_state, parse_attributes, parse_groups
from usersync.model import LEDGER_COLUMNS, TARGET_USER_COLUMNS, TargetState, conform
from usersync.plan import PlanInput, plan_changes

ADMIN_GROUPS = frozenset({"jira-administrators", "jira-system-administrators", "it-root"})


def plan(
    rules: str,
    source,
    actual: TargetState,
    ledger: pd.DataFrame | None = None,
    *,
    settings: dict | None = None,
    groups: dict | None = None,
    **extra,
):
    group_settings = GroupSyncSettings(**(groups or {}))
    sync_settings = SyncSettings(**(settings or {}), groups=group_settings)
    tables = MappingTables(parse_attributes(ATTRIBUTES), parse_groups(HEADER + rules))
    desired = desired_state(source, tables, "jira", groups_settings=group_settings)
    extra.setdefault("privileged_groups", ADMIN_GROUPS)
    return plan_changes(
        PlanInput(
            "jira",
            desired,
            actual,
            ledger if ledger is not None else managed(),
            sync_settings,
            **extra,
        )
    )


def reasons(changes) -> str:
    return " | ".join(changes.conflicts["reason"])


def disabled(source, *users: str):
    people = source.users.copy()
    people.loc[people["uid"].isin(users), "active"] = False
    return type(source)(people, source.groups, source.memberships)


# -- privileged groups -------------------------------------------------------------------------


def test_an_on_the_fly_group_named_like_the_admin_group_adds_nobody_and_is_listed():
    source = snapshot({"jira-administrators": ["alice"], "dev": ["alice"]}, users=("alice",))
    actual = target(["alice"], groups=["jira-administrators"])
    changes = plan("*,,on-the-fly,,,\n", source, actual, managed("alice"))
    assert ops(changes) == {("create_group", "", "dev"), ("add_membership", "alice", "dev")}
    assert "'jira-administrators' grants administration" in reasons(changes)
    assert any("jira-administrators" in line for line in changes.alerts)
    assert "jira-administrators" in changes.refused_groups


def test_a_missing_privileged_group_is_not_created_either():
    source = snapshot({"JIRA-System-Administrators": ["alice"]}, users=("alice",))
    changes = plan("*,,on-the-fly,,,\n", source, target(["alice"]), managed("alice"))
    assert ops(changes) == set()
    assert "grants administration" in reasons(changes)


def test_manual_and_default_rules_onto_a_privileged_group_are_refused_too():
    source = snapshot({"ops": ["alice", "bob"]})
    actual = target(["alice", "bob"], groups=["it-root", "jira-administrators"])
    changes = plan(
        "ops,it-root,manual,,,\n,jira-administrators,default,,,\n",
        source,
        actual,
        managed("alice", "bob"),
    )
    assert ops(changes) == set()
    assert reasons(changes).count("grants administration") == 2


def test_the_allow_list_lets_a_named_privileged_group_be_filled():
    source = snapshot({"ops": ["alice"]}, users=("alice",))
    actual = target(["alice"], groups=["it-root"])
    changes = plan(
        "ops,it-root,manual,,,\n",
        source,
        actual,
        managed("alice"),
        groups={"allow_privileged_groups": ["IT-Root"]},
        privileged_groups=ADMIN_GROUPS - {"it-root"},  # what sync passes: less the allow-list
    )
    assert ops(changes) == {("add_membership", "alice", "it-root")}


def test_a_privileged_group_the_ledger_remembers_loses_managed_members_the_rules_put_there():
    # An earlier (vulnerable) run put alice there through an on-the-fly rule: the group is in
    # the ledger; now refused, the source gives nobody that group, so alice leaves it.
    source = snapshot({"jira-administrators": ["alice"]}, users=("alice",))
    actual = target(
        ["alice", "root"],
        memberships=[("alice", "jira-administrators"), ("root", "jira-administrators")],
        groups=["jira-administrators"],
    )
    ledger = managed("alice", groups=["jira-administrators"])
    changes = plan("*,,on-the-fly,,,\n", source, actual, ledger)
    assert ops(changes) == {("remove_membership", "alice", "jira-administrators")}


def test_keep_existing_groups_false_leaves_privileged_and_access_groups_alone():
    source = snapshot({"dev": ["alice"]}, users=("alice",))
    actual = target(
        ["alice"],
        memberships=[
            ("alice", "jira-administrators"),
            ("alice", "jira-software-users"),
            ("alice", "old-team"),
        ],
        groups=["jira-administrators", "jira-software-users", "old-team"],
    )
    changes = plan(
        "dev,dev,manual,,,\n",
        source,
        actual,
        managed("alice"),
        groups={"keep_existing_groups": False},
        access_groups=frozenset({"jira-software-users"}),
    )
    assert ops(changes) == {
        ("create_group", "", "dev"),
        ("add_membership", "alice", "dev"),
        ("remove_membership", "alice", "old-team"),
    }


# -- on-the-fly rules and existing groups ------------------------------------------------------


def test_an_on_the_fly_rule_does_not_take_over_an_existing_group_usersync_did_not_create():
    source = snapshot({"finance": ["alice"]}, users=("alice",))
    actual = target(["alice", "carol"], memberships=[("carol", "finance")], groups=["finance"])
    changes = plan("*,,on-the-fly,,,\n", source, actual, managed("alice"))
    assert ops(changes) == set()
    assert "'finance' exists in the product and usersync did not create it" in reasons(changes)
    assert "finance" in changes.refused_groups


def test_a_manual_row_is_the_explicit_link_to_an_existing_group():
    source = snapshot({"finance": ["alice"]}, users=("alice",))
    actual = target(["alice"], groups=["finance"])
    changes = plan(
        "finance,finance,manual,,,\n*,,on-the-fly,,,\n", source, actual, managed("alice")
    )
    assert ops(changes) == {("add_membership", "alice", "finance")}
    assert "did not create" not in reasons(changes)


def test_an_on_the_fly_rule_keeps_filling_a_group_usersync_created():
    source = snapshot({"finance": ["alice", "bob"]})
    actual = target(["alice", "bob"], memberships=[("alice", "finance")], groups=["finance"])
    ledger = managed("alice", "bob", groups=["finance"])
    changes = plan("*,,on-the-fly,,,\n", source, actual, ledger)
    assert ops(changes) == {("add_membership", "bob", "finance")}


def test_a_group_a_manual_row_once_linked_is_not_the_on_the_fly_rules_to_take():
    source = snapshot({"finance": ["alice"]}, users=("alice",))
    actual = target(["alice"], groups=["finance"])
    ledger = pd.concat(
        [
            managed("alice"),
            conform(
                pd.DataFrame(
                    [["group", "", "finance", "finance", "linked"]], columns=list(LEDGER_COLUMNS)
                ),
                LEDGER_COLUMNS,
                what="test",
            ),
        ],
        ignore_index=True,
    )
    changes = plan("*,,on-the-fly,,,\n", source, actual, ledger)
    assert ("add_membership", "alice", "finance") not in ops(changes)


# -- administrators, leavers and protected accounts -----------------------------------------


def test_an_unmanaged_administrator_is_never_adopted_even_with_matching_email():
    source = snapshot({}, users=("root",))
    changes = plan("", source, target(["root"]), managed(), administrators=frozenset({"root"}))
    assert ops(changes) == set()
    assert "'root' is an administrator of the product" in reasons(changes)


def test_when_administrators_cannot_be_established_nobody_is_adopted():
    source = snapshot({}, users=("alice",))
    changes = plan(
        "",
        source,
        target(["alice"]),
        managed(),
        admin_problem="the global permissions cannot be read",
    )
    assert ops(changes) == set()
    assert "cannot be verified not to be an administrator" in reasons(changes)
    assert any("administrators cannot be established" in line for line in changes.alerts)


def test_a_managed_administrator_who_leaves_is_deactivated():
    source = disabled(snapshot({}, users=("alice",)), "alice")
    changes = plan(
        "", source, target(["alice"]), managed("alice"), administrators=frozenset({"alice"})
    )
    assert ops(changes) == {("deactivate_user", "alice", "")}


def test_a_managed_administrator_gone_from_the_source_is_deactivated():
    source = snapshot({}, users=("bob",))
    changes = plan(
        "",
        source,
        target(["alice", "bob"]),
        managed("alice", "bob"),
        administrators=frozenset({"alice"}),
    )
    assert ("deactivate_user", "alice", "") in ops(changes)


def test_a_protected_managed_leaver_is_held_back_loudly():
    source = disabled(snapshot({}, users=("alice",)), "alice")
    changes = plan("", source, target(["alice"]), managed("alice"), protected=("alice",))
    assert ops(changes) == set()
    assert "NOT deactivated: account 'alice'" in reasons(changes)
    assert any("NOT deactivated" in line for line in changes.alerts)


# -- relinking a departed identity's account ----------------------------------------------


def _recreated(email: str):
    """jdoe's identity s-jdoe left; a new identity s-new has userName JDoe and this e-mail."""
    people = pd.DataFrame(
        {
            "source_id": ["s-new"],
            "locator": ["uid=JDoe"],
            "active": [True],
            "uid": ["JDoe"],
            "mail": [email],
            "cn": ["Jane Doe"],
        }
    ).astype({"active": "boolean"})
    base = snapshot({}, users=())
    return type(base)(people, base.groups, base.memberships)


def _jdoe_account() -> TargetState:
    users = conform(
        pd.DataFrame(
            [["K-jdoe", "jdoe", "jdoe@corp", "John Doe", True]], columns=list(TARGET_USER_COLUMNS)
        ),
        TARGET_USER_COLUMNS,
        what="test",
    )
    return TargetState(users, target().groups, target().memberships)


def test_a_new_identity_with_another_email_does_not_inherit_the_departed_account():
    changes = plan("", _recreated("jane.doe@corp"), _jdoe_account(), managed("jdoe"))
    assert ("relink_user", "JDoe", "") not in {(o, u, g) for o, u, g in ops(changes)}
    assert not (changes.operations["op"] == "relink_user").any()
    assert not (changes.operations["op"] == "create_user").any()  # the name is taken
    # the old person's account stays theirs, and they left: deactivated
    assert ("deactivate_user", "jdoe", "") in ops(changes)
    assert "belonged to a source user who left" in reasons(changes)


def test_the_same_person_recreated_with_the_same_email_is_relinked():
    changes = plan("", _recreated("JDOE@corp"), _jdoe_account(), managed("jdoe"))
    assert (changes.operations["op"] == "relink_user").sum() == 1
    assert not (changes.operations["op"] == "deactivate_user").any()


def test_adoption_by_username_relinks_whatever_the_email():
    changes = plan(
        "",
        _recreated("jane.doe@corp"),
        _jdoe_account(),
        managed("jdoe"),
        settings={"adoption": "username"},
    )
    assert (changes.operations["op"] == "relink_user").sum() == 1


def test_keep_existing_users_no_never_removes_an_unmanaged_administrator():
    source = snapshot({"ops": ["alice"]}, users=("alice",))
    actual = target(
        ["alice", "root", "carol"],
        memberships=[("root", "ops-team"), ("carol", "ops-team")],
        groups=["ops-team"],
    )
    changes = plan(
        "ops,ops-team,manual,,,no\n",
        source,
        actual,
        managed("alice"),
        administrators=frozenset({"root"}),
    )
    assert ops(changes) == {
        ("add_membership", "alice", "ops-team"),
        ("remove_membership", "carol", "ops-team"),
    }
