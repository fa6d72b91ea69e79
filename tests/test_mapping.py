"""Mapping tables: what admins write in attributes.csv and groups.csv, and what comes out."""

from __future__ import annotations

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from usersync.config import GroupSyncSettings
from usersync.errors import ConfigError
from usersync.mapping import (
    DEFAULT_ATTRIBUTES_CSV,
    MappingTables,
    desired_state,
    load_tables,
    map_attributes,
    parse_attributes,
    parse_groups,
)
from usersync.model import SourceSnapshot


def users(**columns) -> pd.DataFrame:
    n = len(next(iter(columns.values())))
    base = {
        "source_id": [f"id{i}" for i in range(n)],
        "locator": [f"uid=u{i},ou=people" for i in range(n)],
        "active": [True] * n,
    }
    return pd.DataFrame({**base, **columns}).astype({k: "string" for k in columns})


def snapshot(frame: pd.DataFrame, memberships=()) -> SourceSnapshot:
    members = pd.DataFrame(list(memberships), columns=["source_id", "source_group"], dtype="string")
    groups = pd.DataFrame(
        {"source_group_id": members["source_group"], "source_group": members["source_group"]}
    ).drop_duplicates()
    return SourceSnapshot(frame, groups, members)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("target,source,colour\nusername,uid,x\n", "line 1: unknown column(s) 'colour'"),
        ("target,transform\nusername,lower\n", "line 1: missing column(s) source"),
        (
            "target,source,transform\nusername,uid,lowercase\n",
            "line 2: unknown transform 'lowercase' (known: lower, upper, strip, regex, template)",
        ),
        ("target,source,transform,regex\nusername,uid,regex,(oops\n", "line 2: invalid regex"),
        ("target,source\nusername,uid\nmobile,tel\n", "line 3: unknown target attribute 'mobile'"),
        ("target,source\nusername,uid\nusername,mail\n", "'username' is mapped again"),
        ("target,source\nemail,mail\n", "no 'username' row"),
        (
            "target,source,transform,template\nusername,,template,{given name}\n",
            "must be a plain attribute name",
        ),
        ("target,source,transform\nusername,uid,template\n", "needs the template column"),
        ("target,source,transform,regex\nusername,uid,lower,x\n", "transform column has no"),
        ("target,source\nusername,uid,extra\n", "line 2: more cells than columns"),
    ],
)
def test_invalid_attribute_tables_name_file_line_and_fix(text, message):
    with pytest.raises(ConfigError) as error:
        parse_attributes(text, "mappings/x/attributes.csv")
    assert "mappings/x/attributes.csv" in str(error.value)
    assert message in str(error.value)


def test_fallbacks_transforms_template_and_default():
    rules = parse_attributes(
        "target,source,transform,regex,replacement,template,default\n"
        "username,userPrincipalName|uid,strip lower regex,@.*$,,,\n"
        "email,mail,lower,,,,\n"
        "display_name,,template strip,,,{givenName} {sn},\n"
    )
    frame = users(
        userPrincipalName=[" Alice.Smith@CORP.example ", None, ""],
        uid=["asmith", "BJones", "carol"],
        mail=["Alice@Example.ORG", None, "c@x"],
        givenName=["Alice", "Bob", None],
        sn=["Smith", None, None],
    )
    out = map_attributes(frame, rules)
    assert list(out["username"]) == ["alice.smith", "bjones", "carol"]
    assert out["email"].tolist()[0] == "alice@example.org"
    assert pd.isna(out["email"].iloc[1])
    assert list(out["display_name"].iloc[:2]) == ["Alice Smith", "Bob"]
    assert pd.isna(out["display_name"].iloc[2])


def test_upper_and_default_fill_empty_values():
    rules = parse_attributes(
        "target,source,transform,default\nusername,uid,upper,\ndisplay_name,cn,,Unknown\n"
    )
    out = map_attributes(users(uid=["ab"], cn=[" "]), rules)
    assert out["username"].iloc[0] == "AB"
    assert out["display_name"].iloc[0] == "Unknown"


def test_source_attribute_names_match_case_insensitively():
    rules = parse_attributes("target,source\nusername,UID\n")
    assert map_attributes(users(uid=["x"]), rules)["username"].iloc[0] == "x"


def test_shipped_defaults_follow_the_miniorange_app():
    rules = {r.target: r for r in parse_attributes(DEFAULT_ATTRIBUTES_CSV)}
    assert rules["username"].sources[:2] == ("userName", "userPrincipalName")
    assert rules["email"].sources == ("email", "mail")


def test_rejected_users_are_reported_not_provisioned():
    tables = MappingTables(
        parse_attributes("target,source\nusername,uid\nemail,mail\n"),
        parse_groups("source_group,target_group\n"),
    )
    frame = users(uid=["ann", "ANN", None, "dan"], mail=["a@x", "b@x", "c@x", None])
    desired = desired_state(snapshot(frame), tables, "jira")
    assert desired.users.empty
    reasons = dict(zip(desired.rejected["source_id"], desired.rejected["reason"], strict=True))
    assert "duplicate username" in reasons["id0"] and "duplicate username" in reasons["id1"]
    assert reasons["id2"].startswith("no username")
    assert reasons["id3"].startswith("no e-mail")


def test_group_rules_manual_on_the_fly_default_and_per_target():
    groups = parse_groups(
        "source_group,target_group,mode,targets\n"
        "Engineering,developers,manual,\n"
        "Sales,,on-the-fly,\n"
        ",everyone,default,jira\n",
        target_names=["jira", "confluence"],
    )
    tables = MappingTables(parse_attributes("target,source\nusername,uid\nemail,mail\n"), groups)
    frame = users(uid=["ann", "bob"], mail=["a@x", "b@x"])
    frame.loc[1, "active"] = False
    snap = snapshot(
        frame, [("id0", "engineering"), ("id0", "sales"), ("id0", "ops"), ("id1", "sales")]
    )

    jira = desired_state(snap, tables, "jira")
    pairs = set(zip(jira.memberships["username"], jira.memberships["group"], strict=True))
    assert pairs == {("ann", "developers"), ("ann", "sales"), ("ann", "everyone")}
    assert set(jira.groups["group"]) == {"developers", "sales", "everyone"}
    confluence = desired_state(snap, tables, "confluence")
    assert "everyone" not in set(confluence.groups["group"])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("source_group,target_group,mode\na,b,copy\n", "unknown mode 'copy'"),
        ("source_group,target_group\na,\n", "needs source_group and target_group"),
        ("source_group,target_group,mode\n*,x,on-the-fly\n", "leaves target_group empty"),
        ("source_group,target_group,mode\na,x,default\n", "a default rule names only target_group"),
        ("source_group,target_group,targets\na,b,jra\n", "unknown target(s) jra"),
    ],
)
def test_invalid_group_tables(text, message):
    with pytest.raises(ConfigError) as error:
        parse_groups(text, "groups.csv", target_names=["jira"])
    assert message in str(error.value)


def test_missing_groups_csv_is_an_error_and_missing_attributes_means_defaults(tmp_path):
    with pytest.raises(ConfigError, match=r"groups\.csv: missing"):
        load_tables(tmp_path)
    (tmp_path / "groups.csv").write_text("source_group,target_group\n")
    tables = load_tables(tmp_path)
    assert {r.target for r in tables.attributes} == {"username", "email", "display_name"}


def test_transform_is_vectorised_over_a_large_directory():
    n = 100_000
    rules = parse_attributes(
        "target,source,transform,regex,replacement,template\n"
        "username,uid,lower regex,^x,y,\n"
        "display_name,,template,,,{givenName} {sn}\n"
    )
    frame = users(
        uid=[f"X{i}" for i in range(n)], givenName=["G"] * n, sn=[f"S{i}" for i in range(n)]
    )
    out = map_attributes(frame, rules)
    assert out["username"].iloc[-1] == f"y{n - 1}"
    assert out["display_name"].iloc[-1] == f"G S{n - 1}"


def test_a_source_group_starting_with_hash_is_a_rule_not_a_comment():
    from usersync.mapping import parse_groups

    rules = parse_groups(
        "source_group,target_group,mode,targets\n"
        "# a comment, with a comma\n"
        "#just a comment\n"
        "#eng,jira-eng,manual,\n"
        "#ops,,on-the-fly,\n"
    )
    assert [(r.source_group, r.target_group, r.mode) for r in rules] == [
        ("#eng", "jira-eng", "manual"),
        ("#ops", "", "on-the-fly"),
    ]


#: A pattern that backtracks exponentially on a long run of a's not followed by the end.
BACKTRACKING = "(a|aa)+$"


def hostile(i: int = 0) -> str:
    """A value BACKTRACKING runs out of time on (each one distinct)."""
    return "a" * 40 + "!" + str(i)


def test_a_regex_that_backtracks_on_an_idp_value_is_bounded_in_time():
    import time

    rules = parse_attributes(
        f"target,source,transform,regex,replacement\nusername,uid,regex,{BACKTRACKING},x\n"
    )
    values = ["alice", hostile()] + [hostile(i) for i in range(1, 11)]
    started = time.monotonic()
    mapped = map_attributes(pd.DataFrame({"uid": values}, dtype="string"), rules)
    # 11 values run out, at 50 ms each; none stops the mapping (it used to after 5)
    assert time.monotonic() - started < 5
    assert mapped["username"].tolist()[0] == "alice"  # no match on a normal value: unchanged
    assert mapped["username"].iloc[1:].isna().all()  # the values that ran out are not used


def regex_tables(extra: str = "") -> MappingTables:
    """username from uid, through BACKTRACKING (then a default); e-mail from mail."""
    return MappingTables(
        parse_attributes(
            "target,source,transform,regex,replacement,default\n"
            f"username,uid,regex,{BACKTRACKING},x,fallback\n"
            "email,mail,,,,\n" + extra
        ),
        parse_groups("source_group,target_group,mode\n,everyone,default\n"),
    )


def test_a_value_the_regex_runs_out_of_time_on_rejects_its_user_alone_and_says_why():
    # alice is ordinary; 8 hostile users (more than the 5 that used to stop the run), one of
    # them (id2) disabled in the source.
    uids = ["alice", *[hostile(i) for i in range(8)]]
    frame = users(uid=uids, mail=[f"u{i}@x" for i in range(len(uids))])
    frame.loc[2, "active"] = False
    desired = desired_state(snapshot(frame), regex_tables(), "jira")

    assert desired.users["username"].tolist() == ["alice"]
    assert desired.memberships["username"].tolist() == ["alice"]
    rejected = desired.rejected.set_index("source_id")
    assert sorted(rejected.index) == [f"id{i}" for i in range(1, 9)]
    reason = rejected.loc["id1", "reason"]
    assert reason.startswith("attributes.csv line 2 (username): the regex '(a|aa)+$' ran out")
    assert "time budget" in reason and "this user's value" in reason
    assert "every source attribute is empty" not in reason
    assert "fallback" not in set(desired.users["username"])  # the default does not stand in
    # as the source says: the disabled one is still deprovisioned (see the plan test below)
    assert rejected["active"].tolist() == [True, False, True, True, True, True, True, True]


def test_a_display_name_the_regex_runs_out_on_rejects_the_user_instead_of_using_the_username():
    extra = f"display_name,cn,regex,{BACKTRACKING},x,\n"
    frame = users(uid=["alice", "bob"], mail=["a@x", "b@x"], cn=["Alice", hostile()])
    desired = desired_state(snapshot(frame), regex_tables(extra), "jira")
    assert desired.users["username"].tolist() == ["alice"]
    (reason,) = desired.rejected["reason"]
    assert reason.startswith("attributes.csv line 4 (display_name): the regex")


def test_hostile_values_do_not_hold_back_deprovisioning_of_anyone():
    from usersync.config import SyncSettings
    from usersync.model import LEDGER_COLUMNS, TargetState, conform, empty_frame
    from usersync.plan import PlanInput, plan_changes

    # Managed accounts: carl (hostile value, disabled in the source), dora (hostile, active),
    # erin (ordinary, disabled), fred (ordinary, gone from the source).
    frame = users(
        uid=["alice", hostile(1), hostile(2), "erin", *[hostile(i) for i in range(3, 9)]],
        mail=[f"u{i}@x" for i in range(10)],
    )
    frame.loc[[1, 3], "active"] = False
    accounts = {"id1": "carl", "id2": "dora", "id3": "erin", "gone": "fred"}
    ledger = conform(
        pd.DataFrame(
            [["user", s, f"K-{n}", n, "created"] for s, n in accounts.items()],
            columns=list(LEDGER_COLUMNS),
        ),
        LEDGER_COLUMNS,
        what="test",
    )
    actual = TargetState(
        users=pd.DataFrame(
            {
                "target_key": [f"K-{n}" for n in accounts.values()],
                "username": list(accounts.values()),
                "email": [f"{n}@x" for n in accounts.values()],
                "display_name": list(accounts.values()),
                "active": [True] * 4,
            }
        ).astype({"active": "boolean"}),
        groups=empty_frame({"group": "string"}),
        memberships=empty_frame({"group": "string", "username": "string"}),
    )
    desired = desired_state(snapshot(frame), regex_tables(), "jira")
    changes = plan_changes(
        PlanInput("jira", desired, actual, ledger, SyncSettings(max_deactivations=10))
    )
    ops = changes.operations
    deactivated = set(ops.loc[ops["op"] == "deactivate_user", "username"])
    assert deactivated == {"carl", "erin", "fred"}
    assert not (ops["username"] == "dora").any()  # rejected but active: left as it is
    assert set(ops.loc[ops["op"] == "create_user", "username"]) == {"alice"}


def group_tables() -> MappingTables:
    return MappingTables(
        parse_attributes("target,source\nusername,uid\nemail,mail\n"),
        parse_groups("source_group,target_group,mode\n*,,on-the-fly\n"),
    )


@pytest.mark.parametrize(
    "settings",
    [
        {"include": [BACKTRACKING, "^team-"]},
        {"exclude": [BACKTRACKING]},
        {"rename_pattern": BACKTRACKING, "rename_to": "x"},
    ],
    ids=["include", "exclude", "rename_pattern"],
)
def test_a_group_name_a_settings_pattern_runs_out_on_drops_that_group_alone(settings, caplog):
    frame = users(uid=["ann", "bob"], mail=["a@x", "b@x"])
    evil = hostile()
    snap = snapshot(frame, [("id0", "team-blue"), ("id1", evil), ("id1", "team-red")])
    with caplog.at_level("WARNING", logger="usersync.mapping"):
        desired = desired_state(
            snap, group_tables(), "jira", groups_settings=GroupSyncSettings(**settings)
        )
    assert sorted(map(tuple, desired.memberships[["username", "group"]].to_numpy())) == [
        ("ann", "team-blue"),
        ("bob", "team-red"),
    ]
    assert set(desired.groups["group"]) == {"team-blue", "team-red"}
    assert set(desired.users["username"]) == {"ann", "bob"}
    (record,) = [r for r in caplog.records if "time budget" in r.getMessage()]
    message = record.getMessage()
    setting = next(iter(settings))
    assert f"settings.groups.{setting}" in message and repr(evil) in message


def test_an_ldap_attribute_may_be_named_by_its_oid_in_source():
    from usersync.mapping import parse_attributes

    rules = parse_attributes("target,source\nusername,uid\ndisplay_name,2.5.4.4|cn\n")
    assert rules[1].sources == ("2.5.4.4", "cn")
    with pytest.raises(ConfigError, match=r"'2\.5\.' is not a valid source attribute name"):
        parse_attributes("target,source\nusername,2.5.\n")


MEMBER_IDS = st.sampled_from(["id0", "id1", "id2", "gone", None])
GROUP_VALUES = st.sampled_from(["Engineering", "engineering", "Sales", "ops", "Straße", "", None])


@settings(max_examples=100, deadline=None)
@given(
    rows=st.lists(st.tuples(MEMBER_IDS, GROUP_VALUES), max_size=20),
    unused=st.lists(st.sampled_from(["stale", "old-group", "id9"]), unique=True),
    exclude=st.sampled_from([(), ("^ops$",)]),
)
def test_memberships_as_categoricals_map_as_the_same_strings(rows, unused, exclude):
    """An incremental LDAP read hands its memberships over as categoricals (with categories no
    row uses any more): the desired state is the one the same memberships give as strings."""
    groups = parse_groups(
        "source_group,target_group,mode\n"
        "Engineering,developers,manual\n"
        "*,,on-the-fly\n"
        ",everyone,default\n",
        target_names=["jira"],
    )
    tables = MappingTables(parse_attributes("target,source\nusername,uid\nemail,mail\n"), groups)
    frame = users(uid=["ann", "bob", "cy"], mail=["a@x", "b@x", "c@x"])
    as_strings = snapshot(frame, rows)
    members = as_strings.memberships
    coded = pd.DataFrame(
        {
            name: pd.Categorical(
                members[name],
                categories=pd.Index([*members[name].dropna().unique(), *unused], dtype="string"),
            )
            for name in members.columns
        }
    )
    as_codes = SourceSnapshot(frame, as_strings.groups, coded)
    settings_ = GroupSyncSettings(exclude=exclude)

    want = desired_state(as_strings, tables, "jira", groups_settings=settings_)
    got = desired_state(as_codes, tables, "jira", groups_settings=settings_)
    pd.testing.assert_frame_equal(got.memberships, want.memberships)
    pd.testing.assert_frame_equal(got.groups, want.groups)
    pd.testing.assert_frame_equal(got.users, want.users)
