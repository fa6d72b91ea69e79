"""The loader: memberships go in through a product's bulk call where it has one, outcomes stay
per operation, and a refused bulk call is settled row by row.

Runs plans against the Bitbucket emulator (add-users takes many users at once) and the Jira
emulator (one user per call) over real HTTP, and counts the writes in the emulators' request
logs.
"""

from __future__ import annotations

from collections.abc import Iterator

import pandas as pd
import pytest

from tests.targets import harness_bitbucket, harness_jira
from tests.targets.conftest import TargetEnv
from usersync.load import _phases, execute_plan
from usersync.model import PLAN_COLUMNS, conform

ADD_USERS = "/admin/groups/add-users"


@pytest.fixture
def bitbucket() -> Iterator[TargetEnv]:
    with harness_bitbucket.environment() as env:
        yield env


@pytest.fixture
def jira() -> Iterator[TargetEnv]:
    with harness_jira.environment() as env:
        yield env


def membership_plan(rows: list[tuple[str, str]]) -> pd.DataFrame:
    """add_membership operations for (group, username) pairs of existing accounts."""
    frame = pd.DataFrame(
        [
            {
                "seq": seq,
                "target": "t",
                "op": "add_membership",
                "source_id": f"src-{username}",
                "target_key": f"key-{username}",
                "username": username,
                "group": group,
                "before": "",
                "after": "",
                "reason": "in the source group",
                "desired": "",
            }
            for seq, (group, username) in enumerate(rows, start=1)
        ]
    )
    return conform(frame, PLAN_COLUMNS, what="plan")


def seed(env: TargetEnv, users: list[str], groups: list[str]) -> None:
    for user in users:
        env.emulator.seed_user(user, f"{user}@example.com", user.title())
    for group in groups:
        env.emulator.seed_group(group)
    env.emulator.app.clear_log()


def test_bitbucket_memberships_go_in_one_call_per_group(bitbucket: TargetEnv) -> None:
    users = [f"dev{n}" for n in range(7)]
    seed(bitbucket, users, ["developers", "testers"])
    plan = membership_plan([("developers", u) for u in users] + [("testers", u) for u in users[:3]])

    result = execute_plan(bitbucket.target, plan)

    assert {o.status for o in result.outcomes} == {"succeeded"}
    assert len(result.outcomes) == 10
    writes = bitbucket.emulator.app.writes()
    assert all(w.path.endswith(ADD_USERS) for w in writes)
    assert sorted(w.body["group"] for w in writes) == ["developers", "testers"]
    assert bitbucket.emulator.members("developers") == sorted(users)
    assert bitbucket.emulator.members("testers") == sorted(users[:3])


def test_a_big_group_is_split_into_calls_of_the_targets_size(bitbucket: TargetEnv) -> None:
    users = [f"u{n:02d}" for n in range(12)]
    seed(bitbucket, users, ["everyone"])
    bitbucket.target.max_members_per_call = 5  # type: ignore[attr-defined]

    result = execute_plan(bitbucket.target, membership_plan([("everyone", u) for u in users]))

    assert result.failed == 0
    sizes = sorted(len(w.body["users"]) for w in bitbucket.emulator.app.writes())
    assert sizes == [2, 5, 5]
    assert bitbucket.emulator.members("everyone") == users


def test_a_refused_bulk_call_fails_only_the_bad_row(bitbucket: TargetEnv) -> None:
    seed(bitbucket, ["alice", "bob", "carol"], ["developers"])
    # "ghost" was deleted after the plan was made: Bitbucket refuses the whole call.
    plan = membership_plan([("developers", n) for n in ("alice", "ghost", "bob", "carol")])

    result = execute_plan(bitbucket.target, plan)

    status = {o.seq: o.status for o in result.outcomes}
    assert status == {1: "succeeded", 2: "failed", 3: "succeeded", 4: "succeeded"}
    (failed,) = [o for o in result.outcomes if o.status == "failed"]
    assert "ghost" in (failed.error or "")
    assert result.quarantined is None
    assert bitbucket.emulator.members("developers") == ["alice", "bob", "carol"]
    bulk = [w for w in bitbucket.emulator.app.writes() if w.path.endswith(ADD_USERS)]
    assert len(bulk) == 1 and bulk[0].status == 404


def test_a_bulk_call_to_a_target_that_stopped_answering_fails_every_row(
    bitbucket: TargetEnv,
) -> None:
    seed(bitbucket, ["alice", "bob"], ["developers"])
    bitbucket.emulator.app.faults.drop_every = 1
    target = bitbucket.make_target(max_attempts=2)

    result = execute_plan(target, membership_plan([("developers", "alice"), ("developers", "bob")]))

    assert [o.status for o in result.outcomes] == ["failed", "failed"]
    assert result.quarantined is not None
    # Two tries of the bulk call, not two more per row.
    assert len(bitbucket.emulator.app.requests) == 2


def test_a_target_without_a_bulk_call_gets_one_call_per_membership(jira: TargetEnv) -> None:
    seed(jira, ["alice", "bob", "carol"], ["developers"])

    result = execute_plan(
        jira.target, membership_plan([("developers", n) for n in ("alice", "bob", "carol")])
    )

    assert result.failed == 0
    assert len([w for w in jira.emulator.app.writes() if w.method == "POST"]) == 3


def plan_of(rows: list[dict]) -> pd.DataFrame:
    """Operations from partial rows (op, username, group, target_key), numbered in order."""
    blank = {c: "" for c in PLAN_COLUMNS}
    frame = pd.DataFrame(
        [{**blank, "target": "t", "seq": seq, **row} for seq, row in enumerate(rows, start=1)]
    )
    return conform(frame, PLAN_COLUMNS, what="plan")


def test_a_leavers_access_ends_before_anything_else_is_written(jira: TargetEnv) -> None:
    seed(jira, ["alice", "bob", "carol", "dana"], ["developers", "jira-administrators"])
    jira.target.add_member("developers", "dana")
    jira.target.add_member("jira-administrators", "bob")
    jira.emulator.app.clear_log()
    # In the plan's order of kinds: groups, accounts, memberships, deactivations.
    plan = plan_of(
        [
            {"op": "create_group", "group": "testers"},
            {"op": "add_membership", "username": "carol", "target_key": "k-c", "group": "testers"},
            {
                "op": "remove_membership",
                "username": "dana",
                "target_key": "k-d",
                "group": "developers",
            },
            {
                "op": "remove_membership",
                "username": "bob",
                "target_key": "k-b",
                "group": "jira-administrators",
            },
            {"op": "deactivate_user", "username": "alice", "target_key": "k-a"},
        ]
    )

    result = execute_plan(jira.target, plan, revoking_groups={"jira-administrators"})

    assert result.failed == 0
    writes = [
        (w.method, w.path.rsplit("/", 1)[-1], w.query.get("username", ""))
        for w in jira.emulator.app.writes()
    ]
    assert writes == [
        ("PUT", "user", "alice"),  # the leaver first
        ("DELETE", "user", "bob"),  # then out of the administrators
        ("POST", "group", ""),
        ("POST", "user", ""),  # carol into testers (the name is in the body)
        ("DELETE", "user", "dana"),  # an ordinary removal keeps its place
    ]
    assert "bob" not in jira.emulator.group_members("jira-administrators")
    assert not jira.emulator.user("alice").active


def test_a_leader_is_deactivated_after_the_hand_over_the_product_wants_first() -> None:
    plan = plan_of(
        [
            {"op": "create_user", "username": "new", "source_id": "s-new"},
            {"op": "reassign_lead", "username": "lead", "target_key": "k-l"},
            {"op": "deactivate_user", "username": "lead", "target_key": "k-l"},
            {"op": "deactivate_user", "username": "gone", "target_key": "k-g"},
        ]
    )
    rows = plan.astype(object).where(plan.notna(), "").to_dict("records")

    order = [(op, r["username"]) for op, phase in _phases(rows, set()) for r in phase]

    assert order == [
        ("deactivate_user", "gone"),
        ("create_user", "new"),
        ("reassign_lead", "lead"),
        ("deactivate_user", "lead"),
    ]
