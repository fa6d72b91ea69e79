"""Custom attributes: attributes.csv rows `custom:<name>`, through the mapping to the plan."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from usersync.config import SyncSettings
from usersync.errors import ConfigError
from usersync.mapping import MappingTables, desired_state, parse_attributes, parse_groups
from usersync.model import (
    LEDGER_COLUMNS,
    TARGET_GROUP_COLUMNS,
    TARGET_MEMBERSHIP_COLUMNS,
    SourceSnapshot,
    TargetState,
    conform,
    empty_frame,
)
from usersync.plan import PlanInput, plan_changes

ATTRIBUTES = """target,source,transform,targets
username,uid,,
email,mail,,
display_name,cn,,
custom:department,departmentNumber|ou,strip upper,jira
"""


def source(department: str | None) -> SourceSnapshot:
    users = pd.DataFrame(
        {
            "source_id": ["s1"],
            "locator": ["uid=alice"],
            "active": [True],
            "uid": ["alice"],
            "mail": ["alice@corp"],
            "cn": ["Alice"],
            "departmentNumber": [department],
            "ou": [None],
        }
    ).astype({"active": "boolean", "departmentNumber": "string", "ou": "string"})
    no_groups = empty_frame({"source_group_id": "string", "source_group": "string"})
    return SourceSnapshot(
        users, no_groups, empty_frame({"source_id": "string", "source_group": "string"})
    )


def account(department: str | None, *, read: bool = True) -> TargetState:
    users = pd.DataFrame(
        {
            "target_key": ["K1"],
            "username": ["alice"],
            "email": ["alice@corp"],
            "display_name": ["Alice"],
            "active": [True],
        }
    ).astype({"active": "boolean"})
    if read:
        users["custom:department"] = pd.Series([department], dtype="string")
    return TargetState(
        users, empty_frame(TARGET_GROUP_COLUMNS), empty_frame(TARGET_MEMBERSHIP_COLUMNS)
    )


def plan(department, target_state, target="jira"):
    tables = MappingTables(
        parse_attributes(ATTRIBUTES, target_names=["jira", "wiki"]),
        parse_groups("source_group,target_group\n"),
    )
    desired = desired_state(source(department), tables, target)
    ledger = conform(
        pd.DataFrame([["user", "s1", "K1", "alice", "created"]], columns=list(LEDGER_COLUMNS)),
        LEDGER_COLUMNS,
        what="test",
    )
    return plan_changes(PlanInput(target, desired, target_state, ledger, SyncSettings())).operations


def test_a_custom_attribute_that_differs_is_updated_alone():
    p = plan(" sales ", account("MARKETING"))
    assert list(p["op"]) == ["update_user"]
    assert json.loads(p.loc[0, "after"]) == {"custom:department": "SALES"}
    assert json.loads(p.loc[0, "before"]) == {"custom:department": "MARKETING"}


def test_an_equal_custom_attribute_plans_nothing():
    assert plan("sales", account("SALES")).empty


def test_a_custom_attribute_the_account_lacks_is_written():
    p = plan("sales", account(None))
    assert json.loads(p.loc[0, "after"]) == {"custom:department": "SALES"}


def test_no_source_value_is_no_opinion():
    assert plan(None, account("SALES")).empty


def test_a_row_limited_to_one_target_does_not_reach_the_others():
    # "wiki" is not in the row's targets: nothing is compared there, even if it differs.
    assert plan("sales", account("OTHER", read=False), target="wiki").empty


def test_a_new_account_carries_its_custom_attributes_for_the_loader():
    empty = TargetState(
        empty_frame(
            {
                "target_key": "string",
                "username": "string",
                "email": "string",
                "display_name": "string",
                "active": "boolean",
            }
        ),
        empty_frame(TARGET_GROUP_COLUMNS),
        empty_frame(TARGET_MEMBERSHIP_COLUMNS),
    )
    tables = MappingTables(
        parse_attributes(ATTRIBUTES), parse_groups("source_group,target_group\n")
    )
    desired = desired_state(source("sales"), tables, "jira")
    p = plan_changes(
        PlanInput("jira", desired, empty, empty_frame(LEDGER_COLUMNS), SyncSettings())
    ).operations
    assert list(p["op"]) == ["create_user"]
    assert json.loads(p.loc[0, "after"])["custom:department"] == "SALES"


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ("custom:bad name,ou,,\n", "unknown target attribute 'custom:bad name'"),
        ("email,mail,,jira\n", "the targets column applies to custom attributes only"),
        ("custom:x,ou,,nope\n", "unknown target\\(s\\) nope"),
        ("custom:x,ou,,jira\ncustom:x,ou,,\n", "'custom:x' is mapped again \\(first on line 5\\)"),
    ],
)
def test_custom_attribute_rows_are_validated_with_file_and_line(rows, message):
    base = "target,source,transform,targets\nusername,uid,,\nemail,mail,,\ndisplay_name,cn,,\n"
    with pytest.raises(ConfigError, match=message):
        parse_attributes(base + rows, "attributes.csv", target_names=["jira", "wiki"])


def test_one_custom_attribute_may_map_differently_per_target():
    base = "target,source,transform,targets\nusername,uid,,\n"
    rules = parse_attributes(
        base + "custom:x,ou,,jira\ncustom:x,cn,,wiki\n", target_names=["jira", "wiki"]
    )
    assert [r.targets for r in rules[1:]] == [("jira",), ("wiki",)]
