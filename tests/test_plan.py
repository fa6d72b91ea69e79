"""The planner: desired − target − ledger → operations, and its guards. Pure and fast."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from usersync.config import SyncSettings
from usersync.errors import GuardError
from usersync.guards import check_brake
from usersync.model import (
    DESIRED_GROUP_COLUMNS,
    DESIRED_MEMBERSHIP_COLUMNS,
    DESIRED_USER_COLUMNS,
    LEDGER_COLUMNS,
    REJECTED_USER_COLUMNS,
    TARGET_GROUP_COLUMNS,
    TARGET_MEMBERSHIP_COLUMNS,
    TARGET_USER_COLUMNS,
    DesiredState,
    TargetState,
    conform,
    empty_frame,
)
from usersync.plan import PlanInput, plan_changes


def plan_target(data: PlanInput) -> pd.DataFrame:
    """The plan's operations (most tests look at nothing else)."""
    return plan_changes(data).operations


def frame(columns, rows):
    if not rows:
        return empty_frame(columns)
    return conform(pd.DataFrame(rows, columns=list(columns)), columns, what="test")


def desired(users=(), memberships=(), groups=None, rejected=()):
    groups = groups if groups is not None else sorted({g for _, _, g in memberships})
    return DesiredState(
        users=frame(DESIRED_USER_COLUMNS, list(users)),
        groups=frame(DESIRED_GROUP_COLUMNS, [[g] for g in groups]),
        memberships=frame(DESIRED_MEMBERSHIP_COLUMNS, list(memberships)),
        rejected=frame(REJECTED_USER_COLUMNS, list(rejected)),
    )


def actual(users=(), memberships=(), groups=()):
    return TargetState(
        users=frame(TARGET_USER_COLUMNS, list(users)),
        groups=frame(TARGET_GROUP_COLUMNS, [[g] for g in groups]),
        memberships=frame(TARGET_MEMBERSHIP_COLUMNS, list(memberships)),
    )


def ledger(*rows):
    return frame(LEDGER_COLUMNS, [["user", s, k, n, "created"] for s, k, n in rows])


def plan(d, a, led=None, settings=None, protected=()):
    return plan_target(
        PlanInput(
            "jira",
            d,
            a,
            led if led is not None else ledger(),
            settings or SyncSettings(),
            protected,
        )
    )


def ops(p):
    return [(r.op, r.username, r.group) for r in p.itertuples()]


ALICE = ["s1", "alice", "alice@x", "Alice", True]


def test_new_user_is_created_with_groups_in_order():
    p = plan(desired([ALICE], [["s1", "alice", "dev"]]), actual())
    assert ops(p) == [
        ("create_group", "", "dev"),
        ("create_user", "alice", ""),
        ("add_membership", "alice", "dev"),
    ]
    assert json.loads(p.loc[1, "after"]) == {
        "username": "alice",
        "email": "alice@x",
        "display_name": "Alice",
    }
    assert list(p["seq"]) == [1, 2, 3]


def test_unchanged_state_plans_nothing():
    d = desired([ALICE], [["s1", "alice", "dev"]])
    a = actual([["K1", "alice", "alice@x", "Alice", True]], [["alice", "dev"]], ["dev"])
    assert plan(d, a, ledger(("s1", "K1", "alice"))).empty


def test_existing_account_is_adopted_not_duplicated_and_case_is_not_a_change():
    d = desired([ALICE])
    a = actual([["K9", "Alice", "ALICE@x", "Alice", True]])
    p = plan(d, a)
    assert ops(p) == [("adopt_user", "alice", "")]
    assert p.loc[0, "target_key"] == "K9"


def test_rename_in_source_updates_the_linked_account():
    d = desired([["s1", "alice.smith", "alice@x", "Alice", True]], [["s1", "alice.smith", "dev"]])
    a = actual([["K1", "alice", "alice@x", "Alice", True]], [["alice", "dev"]], ["dev"])
    p = plan(d, a, ledger(("s1", "K1", "alice")))
    assert ops(p) == [("update_user", "alice", "")]
    assert json.loads(p.loc[0, "after"]) == {"username": "alice.smith"}
    assert json.loads(p.loc[0, "before"]) == {"username": "alice"}


def test_only_ledger_accounts_are_deactivated():
    d = desired([ALICE])
    a = actual(
        [
            ["K1", "alice", "alice@x", "Alice", True],
            ["K2", "bob", "bob@x", "Bob", True],  # managed, gone from the source
            ["K3", "carol", "carol@x", "Carol", True],  # never managed
        ]
    )
    p = plan(d, a, ledger(("s1", "K1", "alice"), ("s2", "K2", "bob")))
    assert ops(p) == [("deactivate_user", "bob", "")]
    assert p.loc[0, "reason"] == "no longer in the source"


def test_disabled_in_source_deactivates_and_enabled_reactivates():
    d = desired([["s1", "alice", "alice@x", "Alice", False], ["s2", "bob", "bob@x", "Bob", True]])
    a = actual([["K1", "alice", "alice@x", "Alice", True], ["K2", "bob", "bob@x", "Bob", False]])
    p = plan(d, a, ledger(("s1", "K1", "alice"), ("s2", "K2", "bob")))
    assert ops(p) == [("reactivate_user", "bob", ""), ("deactivate_user", "alice", "")]


def test_disabled_source_user_without_account_is_not_created():
    assert plan(desired([["s1", "alice", "a@x", "A", False]]), actual()).empty


def test_rejected_source_user_is_not_deactivated():
    d = desired([], rejected=[["s2", "uid=bob", "no e-mail address", True]])
    a = actual([["K2", "bob", "bob@x", "Bob", True]])
    assert plan(d, a, ledger(("s2", "K2", "bob"))).empty


def test_protected_accounts_get_no_operation():
    d = desired([["s1", "admin", "new@x", "Admin", True]], [["s1", "admin", "dev"]])
    a = actual(
        [["K0", "admin", "old@x", "Admin", True], ["K1", "robot", "r@x", "R", True]], [], ["dev"]
    )
    p = plan(d, a, ledger(("s9", "K1", "robot")), protected=("Admin", "robot"))
    assert p.empty


def test_memberships_are_removed_only_for_managed_users_in_mapped_groups():
    d = desired(
        [ALICE, ["s2", "bob", "bob@x", "Bob", True]],
        [["s1", "alice", "dev"]],
        groups=["dev", "ops"],
    )
    a = actual(
        [
            ["K1", "alice", "alice@x", "Alice", True],
            ["K2", "bob", "bob@x", "Bob", True],
            ["K3", "carol", "c@x", "Carol", True],
        ],
        [["alice", "dev"], ["bob", "dev"], ["bob", "unmapped"], ["carol", "dev"]],
        ["dev", "ops", "unmapped"],
    )
    p = plan(d, a, ledger(("s1", "K1", "alice"), ("s2", "K2", "bob")))
    assert ops(p) == [("remove_membership", "bob", "dev")]


def test_conflicting_ledger_owner_blocks_adoption():
    d = desired([["s2", "alice", "alice@x", "Alice", True]])
    a = actual([["K1", "alice", "alice@x", "Alice", True]])
    # K1 belongs to s1 in the ledger (still in target): s2 must not take it over
    p = plan(d, a, ledger(("s1", "K1", "alice")))
    assert "adopt_user" not in set(p["op"])
    assert "create_user" not in set(p["op"])


def test_settings_switch_off_creates_and_deactivations():
    d = desired([ALICE])
    a = actual([["K2", "bob", "bob@x", "Bob", True]])
    settings = SyncSettings(create_users=False, deactivate_missing_users=False)
    assert plan(d, a, ledger(("s2", "K2", "bob")), settings).empty


def test_plan_is_deterministic():
    users = [[f"s{i}", f"u{i:03d}", f"u{i}@x", f"U{i}", True] for i in range(50)]
    members = [[f"s{i}", f"u{i:03d}", f"g{i % 3}"] for i in range(50)]
    d = desired(users, members)
    first, second = plan(d, actual()), plan(d, actual())
    pd.testing.assert_frame_equal(first, second)


def test_brake_stops_mass_deactivation():
    managed = ledger(*[(f"s{i}", f"K{i}", f"u{i}") for i in range(100)])
    a = actual([[f"K{i}", f"u{i}", f"u{i}@x", "U", True] for i in range(100)])
    d = desired([[f"s{i}", f"u{i}", f"u{i}@x", "U", True] for i in range(70)])
    p = plan(d, a, managed)
    assert (p["op"] == "deactivate_user").sum() == 30
    with pytest.raises(GuardError, match=r"deactivations \(30% of 100 managed accounts\): 30"):
        check_brake(p, managed, a, SyncSettings(), "jira")
    check_brake(p, managed, a, SyncSettings(max_deactivation_ratio=0.5), "jira")
    with pytest.raises(GuardError, match=r"max_deactivations=10.*allow_mass_changes"):
        check_brake(
            p, managed, a, SyncSettings(max_deactivations=10, max_deactivation_ratio=1), "jira"
        )


def test_planning_100k_users_is_vectorised():
    n = 100_000
    users = pd.DataFrame(
        {
            "source_id": [f"s{i}" for i in range(n)],
            "username": [f"u{i}" for i in range(n)],
            "email": [f"u{i}@x" for i in range(n)],
            "display_name": ["U"] * n,
            "active": [True] * n,
        }
    )
    d = DesiredState(
        users=conform(users, DESIRED_USER_COLUMNS, what="d"),
        groups=frame(DESIRED_GROUP_COLUMNS, [["all"]]),
        memberships=conform(
            users[["source_id", "username"]].assign(group="all"),
            DESIRED_MEMBERSHIP_COLUMNS,
            what="m",
        ),
        rejected=empty_frame(REJECTED_USER_COLUMNS),
    )
    existing = users.iloc[: n // 2].rename(columns={"source_id": "target_key"})
    existing["display_name"] = "Old"
    a = TargetState(
        users=conform(existing, TARGET_USER_COLUMNS, what="a"),
        groups=frame(TARGET_GROUP_COLUMNS, [["all"]]),
        memberships=conform(
            existing[["username"]].assign(group="all"), TARGET_MEMBERSHIP_COLUMNS, what="m"
        ),
    )
    led = conform(
        existing[["target_key", "username"]].assign(
            kind="user",
            source_id=existing["target_key"],
            name=existing["username"],
            origin="created",
        ),
        LEDGER_COLUMNS,
        what="l",
    )
    p = plan(d, a, led)
    counts = p["op"].value_counts().to_dict()
    assert counts == {"create_user": n // 2, "update_user": n // 2, "add_membership": n // 2}


# -- lifecycle edges: each expectation is written from the rules, not from the planner --------


def group_ledger(*names):
    return frame(LEDGER_COLUMNS, [["group", "", n.casefold(), n, "created"] for n in names])


def both(*parts):
    return pd.concat(parts, ignore_index=True)


def test_recreated_identity_takes_over_its_predecessors_account():
    # s1 left the source; s2 has the same username: same account, reactivated, not a new one
    d = desired([["s2", "alice", "alice@x", "Alice", True]])
    a = actual([["K1", "alice", "alice@x", "Alice", False]])
    p = plan(d, a, ledger(("s1", "K1", "alice")))
    assert ops(p) == [("relink_user", "alice", ""), ("reactivate_user", "alice", "")]
    assert set(p["target_key"]) == {"K1"}


def test_recreated_identity_beside_its_disabled_predecessor_is_not_locked_out():
    # the old entry is still there, disabled, with the same username
    from usersync.mapping import MappingTables, desired_state, parse_attributes, parse_groups
    from usersync.model import SourceSnapshot

    users = pd.DataFrame(
        {
            "source_id": ["s1", "s2"],
            "locator": ["uid=alice,ou=old", "uid=alice,ou=new"],
            "active": [False, True],
            "uid": ["alice", "alice"],
            "mail": ["alice@x", "alice@x"],
            "cn": ["Alice", "Alice"],
        }
    )
    snapshot = SourceSnapshot(
        users,
        empty_frame({"source_group_id": "string", "source_group": "string"}),
        empty_frame({"source_id": "string", "source_group": "string"}),
    )
    tables = MappingTables(
        parse_attributes("target,source\nusername,uid\nemail,mail\ndisplay_name,cn\n"),
        parse_groups("source_group,target_group,mode\n"),
    )
    d = desired_state(snapshot, tables, "jira")
    a = actual([["K1", "alice", "alice@x", "Alice", True]])
    p = plan(d, a, ledger(("s1", "K1", "alice")))
    assert ops(p) == [("relink_user", "alice", "")]
    assert "deactivate_user" not in set(p["op"])


def test_disabled_user_whose_mapping_is_rejected_is_still_deactivated():
    # off-boarding cleared the mail and disabled the user
    d = desired([], rejected=[["s2", "uid=bob", "no e-mail address", False]])
    a = actual([["K2", "bob", "bob@x", "Bob", True]])
    p = plan(d, a, ledger(("s2", "K2", "bob")))
    assert ops(p) == [("deactivate_user", "bob", "")]


def test_on_the_fly_group_that_emptied_loses_the_memberships_usersync_gave():
    d = desired([ALICE], [], groups=[])
    a = actual(
        [["K1", "alice", "alice@x", "Alice", True], ["K3", "carol", "c@x", "C", True]],
        [["alice", "eng"], ["carol", "eng"]],
        ["eng"],
    )
    p = plan(d, a, both(ledger(("s1", "K1", "alice")), group_ledger("eng")))
    # carol is not managed: her membership stays
    assert ops(p) == [("remove_membership", "alice", "eng")]


def test_membership_of_a_deactivated_account_is_kept_by_default_and_removed_on_request():
    d = desired([["s1", "alice", "alice@x", "Alice", False]], [], groups=["dev"])
    a = actual([["K1", "alice", "alice@x", "Alice", True]], [["alice", "dev"]], ["dev"])
    led = ledger(("s1", "K1", "alice"))
    assert ops(plan(d, a, led)) == [("deactivate_user", "alice", "")]
    p = plan(d, a, led, SyncSettings(memberships_of_deactivated="remove"))
    assert ops(p) == [("remove_membership", "alice", "dev"), ("deactivate_user", "alice", "")]


def test_mass_membership_removal_from_one_group_trips_the_brake():
    n = 12
    users = [[f"s{i}", f"u{i}", f"u{i}@x", "U", True] for i in range(n)]
    d = desired(users, [], groups=["jira-software-users"])
    a = actual(
        [[f"K{i}", f"u{i}", f"u{i}@x", "U", True] for i in range(n)],
        [[f"u{i}", "jira-software-users"] for i in range(n)],
        ["jira-software-users"],
    )
    led = ledger(*[(f"s{i}", f"K{i}", f"u{i}") for i in range(n)])
    p = plan(d, a, led)
    assert (p["op"] == "remove_membership").sum() == n
    with pytest.raises(GuardError, match=r"jira-software-users.*12 of its 12 members"):
        check_brake(p, led, a, SyncSettings(), "jira")
    with pytest.raises(GuardError, match="max_membership_removals=5"):
        check_brake(
            p, led, a, SyncSettings(max_membership_removals=5, max_group_removal_ratio=1), "jira"
        )


def test_unknown_email_is_never_a_change_and_is_counted_as_unverifiable():
    d = desired([ALICE])
    a = actual([["K1", "alice", pd.NA, "Alice", True]])
    changes = plan_changes(PlanInput("c", d, a, ledger(("s1", "K1", "alice")), SyncSettings()))
    assert changes.operations.empty
    assert changes.unverifiable == {"email": 1}


def test_account_renamed_by_hand_is_found_by_key_and_renamed_back():
    d = desired([ALICE], [["s1", "alice", "dev"]])
    a = actual([["K1", "alice-old", "alice@x", "Alice", True]], [["alice-old", "dev"]], ["dev"])
    p = plan(d, a, ledger(("s1", "K1", "alice")))
    assert ops(p) == [("update_user", "alice-old", "")]
    assert json.loads(p.loc[0, "after"]) == {"username": "alice"}
    assert p.loc[0, "target_key"] == "K1"


def test_two_live_identities_claiming_one_account_get_no_operation_and_are_listed():
    # s1 owns K1 and is still active in the source (rejected for now: no e-mail); s2 is new
    d = desired(
        [["s2", "alice", "alice2@x", "Alice 2", True]],
        rejected=[["s1", "uid=alice,ou=a", "no e-mail address", True]],
    )
    a = actual([["K1", "alice", "alice@x", "Alice", True]])
    changes = plan_changes(PlanInput("jira", d, a, ledger(("s1", "K1", "alice")), SyncSettings()))
    assert changes.operations.empty
    assert list(changes.conflicts["source_id"]) == ["s2"]
    assert "already linked" in changes.conflicts.loc[0, "reason"]


def test_rename_onto_a_name_another_account_holds_is_a_conflict_not_a_failing_write():
    d = desired([["s1", "bob", "alice@x", "Alice", True]])
    a = actual([["K1", "alice", "alice@x", "Alice", True], ["K9", "bob", "b@x", "Bob", True]])
    changes = plan_changes(PlanInput("jira", d, a, ledger(("s1", "K1", "alice")), SyncSettings()))
    assert changes.operations.empty
    assert "another account has that username" in changes.conflicts.loc[0, "reason"]


def test_a_rename_that_frees_a_name_runs_before_the_creation_that_takes_it():
    # s1 renamed alice -> alice.old in the source; a new s2 is called alice
    d = desired([["s1", "alice.old", "a1@x", "A1", True], ["s2", "alice", "a2@x", "A2", True]])
    a = actual([["K1", "alice", "a1@x", "A1", True]])
    p = plan(d, a, ledger(("s1", "K1", "alice")))
    assert ops(p) == [("update_user", "alice", ""), ("create_user", "alice", "")]


# -- adoption is safe by default ----------------------------------------------------------------


def test_adoption_needs_the_email_to_match_by_default():
    d = desired([["s1", "jira-sysadmin", "attacker@evil.example", "X", True]])
    a = actual([["K0", "JIRA-SYSADMIN", "root@corp.example", "Root", True]])
    changes = plan_changes(PlanInput("jira", d, a, ledger(), SyncSettings()))
    assert changes.operations.empty  # neither adopted nor overwritten nor duplicated
    assert "e-mail differs" in changes.conflicts.loc[0, "reason"]


def test_adoption_policies():
    d = desired([ALICE])
    other_mail = actual([["K9", "alice", "someone@else", "Alice", True]])
    unknown_mail = actual([["K9", "alice", pd.NA, "Alice", True]])
    by_name = SyncSettings(adoption="username")
    assert ops(plan(d, other_mail, settings=by_name))[0] == ("adopt_user", "alice", "")
    never = plan_changes(PlanInput("j", d, other_mail, ledger(), SyncSettings(adoption="never")))
    assert never.operations.empty and "adoption: never" in never.conflicts.loc[0, "reason"]
    unknown = plan_changes(PlanInput("c", d, unknown_mail, ledger(), SyncSettings()))
    assert unknown.operations.empty
    assert "cannot be read" in unknown.conflicts.loc[0, "reason"]


def test_a_protected_account_a_source_user_names_is_reported_not_touched():
    d = desired([["s1", "root", "root@corp", "Root", True]])
    a = actual([["K0", "root", "other@corp", "Root", True]])
    changes = plan_changes(
        PlanInput("jira", d, a, ledger(), SyncSettings(adoption="username"), protected=("root",))
    )
    assert changes.operations.empty
    assert "is protected" in changes.conflicts.loc[0, "reason"]


def test_a_product_that_cannot_rename_gets_a_conflict_not_a_failing_rename_every_run():
    # carol was renamed to dave in the source, and a new carol appeared (Confluence)
    d = desired([["s1", "dave", "c@x", "Carol", True], ["s2", "carol", "new@x", "New Carol", True]])
    a = actual([["K1", "carol", "c@x", "Carol", True]])
    changes = plan_changes(
        PlanInput(
            "confluence", d, a, ledger(("s1", "K1", "carol")), SyncSettings(), can_rename=False
        )
    )
    assert changes.operations.empty  # no rename to fail, no create onto a taken name
    reasons = " ".join(changes.conflicts["reason"])
    assert "cannot rename accounts" in reasons and "already linked" in reasons


def test_memberships_address_the_account_by_its_current_name_when_a_rename_is_refused():
    # erin was renamed to frank in the source; a hand-made 'frank' holds that name
    d = desired([["s1", "frank", "erin@x", "Erin", True]], [["s1", "frank", "ops"]], ["ops"])
    a = actual(
        [["K1", "erin", "erin@x", "Erin", True], ["K9", "frank", "hand@x", "Hand", True]],
        [],
        ["ops"],
    )
    p = plan(d, a, ledger(("s1", "K1", "erin")))
    assert ops(p) == [("add_membership", "erin", "ops")]
    assert p.loc[0, "target_key"] == "K1"
