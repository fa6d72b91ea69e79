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


def test_a_regex_that_backtracks_on_an_idp_value_is_bounded_in_time():
    import time

    import pandas as pd

    from usersync.mapping import (
        REGEX_TIMEOUTS_TOLERATED,
        RegexTimeoutError,
        map_attributes,
        parse_attributes,
    )

    rules = parse_attributes(
        "target,source,transform,regex,replacement\nusername,uid,regex,(a|aa)+$,x\n"
    )
    evil = "a" * 40 + "!"
    users = pd.DataFrame({"uid": ["alice", evil]}, dtype="string")
    started = time.monotonic()
    mapped = map_attributes(users, rules)
    assert time.monotonic() - started < 2
    assert mapped["username"].tolist()[0] == "alice"  # no match on a normal value: unchanged
    assert pd.isna(mapped["username"].tolist()[1])  # the value that ran out is not provisioned

    many = pd.DataFrame({"uid": [evil] * (REGEX_TIMEOUTS_TOLERATED + 1)}, dtype="string")
    with pytest.raises(RegexTimeoutError, match=r"line 2.*time budget"):
        map_attributes(many, rules)


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
