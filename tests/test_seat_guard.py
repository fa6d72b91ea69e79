"""The licence-seat guard: creations and reactivations beyond the free seats are held back,
all of them or by priority, never half an account."""

from __future__ import annotations

import pandas as pd

from usersync.config import SeatSettings
from usersync.guards import seat_guard
from usersync.model import (
    CONFLICT_COLUMNS,
    DESIRED_GROUP_COLUMNS,
    DESIRED_MEMBERSHIP_COLUMNS,
    DESIRED_USER_COLUMNS,
    PLAN_COLUMNS,
    REJECTED_USER_COLUMNS,
    DesiredState,
    conform,
    empty_frame,
)
from usersync.targets.base import Seats


class Licensed:
    """A target whose licence has `free` seats; counts how often it was asked."""

    name = "jira"

    def __init__(self, seats: Seats) -> None:
        self.seats = seats
        self.asked = 0

    def licence_seats(self) -> Seats:
        self.asked += 1
        return self.seats


def plan(*rows):
    frame = pd.DataFrame(
        [
            {
                "seq": i + 1,
                "target": "jira",
                "op": op,
                "source_id": sid,
                "target_key": key,
                "username": user,
                "group": group,
                "before": "",
                "after": "",
                "reason": "",
                "desired": "",
            }
            for i, (op, sid, key, user, group) in enumerate(rows)
        ]
    )
    return conform(frame, PLAN_COLUMNS, what="test")


PLAN = plan(
    ("create_group", "", "", "", "devs"),
    ("create_user", "s-ann", "", "ann", ""),
    ("create_user", "s-bob", "", "bob", ""),
    ("reactivate_user", "s-cid", "K-cid", "cid", ""),
    ("add_membership", "s-ann", "", "ann", "devs"),
    ("add_membership", "s-bob", "", "bob", "devs"),
    ("deactivate_user", "s-old", "K-old", "old", ""),
)
DESIRED = DesiredState(
    users=empty_frame(DESIRED_USER_COLUMNS),
    groups=empty_frame(DESIRED_GROUP_COLUMNS),
    memberships=conform(
        pd.DataFrame([["s-bob", "bob", "admins"]], columns=list(DESIRED_MEMBERSHIP_COLUMNS)),
        DESIRED_MEMBERSHIP_COLUMNS,
        what="test",
    ),
    rejected=empty_frame(REJECTED_USER_COLUMNS),
)
NO_CONFLICTS = empty_frame(CONFLICT_COLUMNS)


def ops(frame):
    return [(r.op, r.username) for r in frame.itertuples()]


def test_enough_seats_changes_nothing():
    target = Licensed(Seats(free=3, limit=10, used=7))
    kept, conflicts, seats = seat_guard(PLAN, NO_CONFLICTS, target, SeatSettings(), DESIRED)
    assert ops(kept) == ops(PLAN) and conflicts.empty
    assert seats == {
        "needed": 3,
        "free": 3,
        "limit": 10,
        "used": 7,
        "known": True,
        "detail": "",
        "held_back": 0,
    }


def test_short_of_seats_creates_none_and_holds_their_memberships():
    target = Licensed(Seats(free=2, limit=10, used=8))
    kept, conflicts, seats = seat_guard(PLAN, NO_CONFLICTS, target, SeatSettings(), DESIRED)
    # The deactivation frees a seat only once it succeeds: not counted now.
    assert ops(kept) == [("create_group", ""), ("deactivate_user", "old")]
    assert sorted(conflicts["username"]) == ["ann", "bob", "cid"]
    assert "2 free seat(s) and this plan needs 3" in conflicts["reason"].iloc[0]
    assert seats["held_back"] == 3


def test_by_priority_gives_the_free_seats_to_priority_groups_first():
    target = Licensed(Seats(free=1))
    settings = SeatSettings(when_short="by_priority", priority_groups=("admins",))
    kept, conflicts, _ = seat_guard(PLAN, NO_CONFLICTS, target, settings, DESIRED)
    assert ops(kept) == [
        ("create_group", ""),
        ("create_user", "bob"),  # in "admins": first
        ("add_membership", "bob"),
        ("deactivate_user", "old"),
    ]
    assert sorted(conflicts["username"]) == ["ann", "cid"]


def test_unlimited_or_unknown_seats_hold_nothing_back():
    for seats in (Seats(None), Seats(None, known=False, detail="no permission")):
        kept, conflicts, figures = seat_guard(
            PLAN, NO_CONFLICTS, Licensed(seats), SeatSettings(), DESIRED
        )
        assert ops(kept) == ops(PLAN) and conflicts.empty
        assert figures["held_back"] == 0


def test_seats_are_not_asked_for_a_plan_that_takes_none():
    target = Licensed(Seats(free=0))
    only_groups = plan(("add_membership", "s-x", "K-x", "x", "devs"))
    seat_guard(only_groups, NO_CONFLICTS, target, SeatSettings(), DESIRED)
    assert target.asked == 0
