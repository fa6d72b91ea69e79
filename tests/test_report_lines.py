"""A guard that holds back many accounts for one reason says so in one log line, with the count
and the first names; the full list stays in the plan artifact and the store (issue 22)."""

from __future__ import annotations

from usersync.report import conflict_lines


def test_one_line_per_reason_with_the_count_and_the_first_names() -> None:
    held = [{"username": f"user{i:04d}", "reason": "no licence seat"} for i in range(1607)]
    other = {"username": "", "reason": "group 'x' grants administration"}
    lines = conflict_lines([*held, other])
    assert lines == [
        "1607 account(s) (user0000, user0001, user0002, user0003, user0004, ...): no licence seat",
        "group 'x' grants administration",
    ]


def test_a_single_account_is_named_as_before() -> None:
    assert conflict_lines([{"username": "ann", "reason": "r"}]) == ["no operation for ann: r"]
