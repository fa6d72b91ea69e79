"""Project and component leads are handed over before their account is deactivated."""

from __future__ import annotations

import json

from tests.test_plan import frame
from usersync.config import SyncSettings
from usersync.model import (
    DESIRED_GROUP_COLUMNS,
    DESIRED_MEMBERSHIP_COLUMNS,
    DESIRED_USER_COLUMNS,
    LEAD_COLUMNS,
    LEDGER_COLUMNS,
    REJECTED_USER_COLUMNS,
    TARGET_GROUP_COLUMNS,
    TARGET_MEMBERSHIP_COLUMNS,
    TARGET_USER_COLUMNS,
    DesiredState,
    TargetState,
    empty_frame,
)
from usersync.plan import PlanInput, plan_changes

# alice stays; bob left the source and leads project ABC and a component of XYZ.
DESIRED = DesiredState(
    users=frame(DESIRED_USER_COLUMNS, [["s1", "alice", "a@x", "Alice", True]]),
    groups=empty_frame(DESIRED_GROUP_COLUMNS),
    memberships=empty_frame(DESIRED_MEMBERSHIP_COLUMNS),
    rejected=empty_frame(REJECTED_USER_COLUMNS),
)
LEDGER = frame(
    LEDGER_COLUMNS,
    [["user", "s1", "K1", "alice", "created"], ["user", "s2", "K2", "bob", "created"]],
)


def state(leads) -> TargetState:
    return TargetState(
        users=frame(
            TARGET_USER_COLUMNS,
            [["K1", "alice", "a@x", "Alice", True], ["K2", "bob", "b@x", "Bob", True]],
        ),
        groups=empty_frame(TARGET_GROUP_COLUMNS),
        memberships=empty_frame(TARGET_MEMBERSHIP_COLUMNS),
        leads=frame(LEAD_COLUMNS, leads),
    )


BOB_LEADS = [
    ["Bob", "project", "ABC", "Alpha", "ABC"],
    ["bob", "component", "10001", "Backend", "XYZ"],
]


def plan(leads, **options):
    return plan_changes(PlanInput("jira", DESIRED, state(leads), LEDGER, SyncSettings(), **options))


def test_leads_are_handed_over_then_the_account_is_deactivated():
    changes = plan(BOB_LEADS, default_leads={"project": "lead.admin"})
    p = changes.operations
    assert list(p["op"]) == ["reassign_lead", "reassign_lead", "deactivate_user"]
    roles = [json.loads(b) for b in p["before"][:2]]
    assert {(r["kind"], r["id"], r["lead"]) for r in roles} == {
        ("project", "ABC", "Bob"),
        ("component", "10001", "bob"),
    }
    assert all(json.loads(a) == {"lead": "lead.admin"} for a in p["after"][:2])
    assert set(p["username"]) == {"bob"}


def test_components_go_to_their_own_default_lead_when_given():
    p = plan(
        BOB_LEADS, default_leads={"project": "lead.admin", "component": "comp.admin"}
    ).operations
    after = {
        json.loads(b)["kind"]: json.loads(a)["lead"]
        for b, a in zip(p["before"][:2], p["after"][:2], strict=True)
    }
    assert after == {"project": "lead.admin", "component": "comp.admin"}


def test_without_a_default_lead_a_project_lead_is_not_deactivated_and_says_why():
    changes = plan(BOB_LEADS)
    assert changes.operations.empty
    (reason,) = changes.conflicts["reason"]
    assert "project Alpha (ABC)" in reason and "component Backend (project XYZ)" in reason
    assert "default_project_lead" in reason


def test_an_unusable_default_lead_blocks_the_deactivation_with_its_problem():
    changes = plan(
        BOB_LEADS,
        default_leads={"project": "lead.admin"},
        lead_problem="default_project_lead 'lead.admin' is deactivated",
    )
    assert changes.operations.empty
    assert "'lead.admin' is deactivated" in changes.conflicts["reason"].iloc[0]


def test_without_defaults_a_component_goes_to_its_staying_project_lead_first():
    # Jira refuses to deactivate a component lead too: the project's lead (alice stays)
    # takes the component, then bob goes.
    p = plan([["alice", "project", "XYZ", "Xylo", "XYZ"], BOB_LEADS[1]]).operations
    assert list(p["op"]) == ["reassign_lead", "deactivate_user"]
    assert json.loads(p["before"].iloc[0])["id"] == "10001"
    assert json.loads(p["after"].iloc[0]) == {"lead": "alice"}


def test_a_component_nobody_can_take_keeps_its_lead_active_and_names_it():
    changes = plan([BOB_LEADS[1]])  # no default lead, and XYZ's lead is not known
    assert changes.operations.empty
    (reason,) = changes.conflicts["reason"]
    assert "'bob' leads component Backend (project XYZ)" in reason
    assert "refuses to deactivate a project or component lead" in reason


def test_staying_leads_are_left_alone():
    p = plan([["alice", "project", "ABC", "Alpha", "ABC"]], default_leads={"project": "x"})
    assert list(p.operations["op"]) == ["deactivate_user"]
    assert p.operations["username"].tolist() == ["bob"]
