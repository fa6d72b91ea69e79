"""Merging an incremental read into the cached snapshot, and when a full read is due (no server)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from usersync.sources.ldap import DirectoryChanges, DirectoryPosition
from usersync.sources.watermark import full_read_reason, merge_changes
from usersync.store import SourceWatermark


def frame(rows: list[tuple], columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=columns, dtype="string")


def users(*rows: tuple) -> pd.DataFrame:
    out = frame(
        [(sid, dn, mail) for sid, dn, _active, mail in rows], ["source_id", "locator", "mail"]
    )
    out.insert(2, "active", pd.Series([r[2] for r in rows], dtype="boolean"))
    return out


def groups(*rows: tuple) -> pd.DataFrame:
    return frame(list(rows), ["source_group_id", "source_group", "locator"])


def memberships(*rows: tuple) -> pd.DataFrame:
    return frame(list(rows), ["source_id", "source_group"])


CACHED_USERS = users(("u1", "CN=a", True, "a@x"), ("u2", "CN=b", True, "b@x"))
CACHED_GROUPS = groups(("g1", "team", "CN=team"), ("g2", "all", "CN=all"))
CACHED_MEMBERS = memberships(("u1", "team"), ("u2", "team"), ("u1", "all"), ("u2", "all"))


@pytest.fixture(params=["strings", "categoricals"])
def cached_members(request: pytest.FixtureRequest) -> pd.DataFrame:
    """The cached memberships as a snapshot holds them, or as an incremental read loads them."""
    return CACHED_MEMBERS if request.param == "strings" else CACHED_MEMBERS.astype("category")


def pairs(frame: pd.DataFrame) -> list[tuple[str, str]]:
    """The (user, group) rows, whether the columns are strings or categoricals over strings."""
    for dtype in frame.dtypes:
        values = dtype.categories.dtype if isinstance(dtype, pd.CategoricalDtype) else dtype
        assert str(values) == "string"
    return sorted(map(tuple, frame.astype("string").to_numpy().tolist()))


def test_cached_memberships_decoded_as_categoricals_stay_coded_with_the_names_read() -> None:
    """The merge builds no string per cached row: a name read that the cache lacks (a renamed
    group, a new user) becomes a new category."""
    changes = DirectoryChanges(
        users=users(("u3", "CN=c", True, "c@x")),
        groups=groups(("g1", "squad", "CN=squad")),
        memberships=memberships(("u3", "squad"), ("u1", "squad")),
        all_groups=False,
    )
    _, _, merged = merge_changes(
        CACHED_USERS, CACHED_GROUPS, CACHED_MEMBERS.astype("category"), changes
    )
    assert all(isinstance(dtype, pd.CategoricalDtype) for dtype in merged.dtypes)
    assert set(merged["source_group"].cat.categories) >= {"all", "squad"}
    assert pairs(merged) == [("u1", "all"), ("u1", "squad"), ("u2", "all"), ("u3", "squad")]


def test_a_renamed_group_loses_its_old_name_and_a_changed_user_its_old_rows(
    cached_members: pd.DataFrame,
) -> None:
    changes = DirectoryChanges(
        users=users(("u2", "CN=b", False, "b2@x"), ("u3", "CN=c", True, "c@x")),
        groups=groups(("g1", "squad", "CN=squad")),  # team renamed squad, u2 left it
        memberships=memberships(("u1", "squad"), ("u3", "squad"), ("u2", "all")),
        all_groups=False,
    )
    merged_users, merged_groups, merged_members = merge_changes(
        CACHED_USERS, CACHED_GROUPS, cached_members, changes
    )
    by_id = merged_users.set_index("source_id")
    assert list(by_id.index) == ["u1", "u2", "u3"]
    assert by_id.loc["u2", "mail"] == "b2@x" and not by_id.loc["u2", "active"]
    assert set(merged_groups["source_group"]) == {"squad", "all"}
    assert pairs(merged_members) == [("u1", "all"), ("u1", "squad"), ("u2", "all"), ("u3", "squad")]


def test_with_every_group_read_groups_and_memberships_are_replaced() -> None:
    changes = DirectoryChanges(
        users=users(),
        groups=groups(("g2", "all", "CN=all")),  # g1 is gone
        memberships=memberships(("u1", "all")),
        all_groups=True,
    )
    _, merged_groups, merged_members = merge_changes(
        CACHED_USERS, CACHED_GROUPS, CACHED_MEMBERS, changes
    )
    assert list(merged_groups["source_group"]) == ["all"]
    assert merged_members.to_numpy().tolist() == [["u1", "all"]]


def test_without_memberof_a_changed_user_keeps_the_memberships_of_unchanged_groups(
    cached_members: pd.DataFrame,
) -> None:
    """OpenLDAP's group_member profiles read no memberOf: only changed groups' rows change."""
    changes = DirectoryChanges(
        users=users(("u2", "CN=b", True, "b2@x")),
        groups=groups(("g1", "team", "CN=team")),  # u2 left team
        memberships=memberships(("u1", "team")),
        all_groups=False,
        users_memberships=False,
    )
    _, _, merged_members = merge_changes(CACHED_USERS, CACHED_GROUPS, cached_members, changes)
    assert pairs(merged_members) == [("u1", "all"), ("u1", "team"), ("u2", "all")]


def test_openldap_positions_decide_full_reads_by_database_and_contextcsn() -> None:
    now = datetime(2026, 1, 2, tzinfo=UTC)
    csn = 1_767_312_000_000_000  # 2026-01-02 00:00:00 UTC in microseconds
    stored = SourceWatermark("ldap://a db1 sid=000", csn, "fp", now, now)

    def reason(position: DirectoryPosition) -> str | None:
        return full_read_reason(stored, position, "fp", now=now, full_every_hours=24)

    assert reason(DirectoryPosition("ldap://a db1 sid=000", csn + 5, kind="csn")) is None
    assert str(reason(DirectoryPosition("ldap://a db1 sid=001", csn + 5, kind="csn"))).startswith(
        "another server or database"
    )
    went_back = str(reason(DirectoryPosition("ldap://a db1 sid=000", csn - 1, kind="csn")))
    assert went_back.startswith(
        "the server or database's mark went back from contextCSN 2026-01-02"
    )
    no_csn = str(reason(DirectoryPosition("ldap://a: db1 show(s) no contextCSN", None, kind="csn")))
    assert "no syncprov overlay" in no_csn and "every run reads everything" in no_csn


def test_full_read_reasons() -> None:
    now = datetime(2026, 1, 2, tzinfo=UTC)
    stored = SourceWatermark("DC1", 100, "fp", now - timedelta(hours=1), now - timedelta(hours=2))
    here = DirectoryPosition("DC1", 120)

    def reason(
        stored: SourceWatermark | None = stored,
        position: DirectoryPosition = here,
        fingerprint: str = "fp",
        requested: bool = False,
    ) -> str | None:
        return full_read_reason(
            stored, position, fingerprint, now=now, full_every_hours=24, requested=requested
        )

    assert reason() is None
    assert reason(requested=True) == "a full read was requested"
    assert str(reason(stored=None)).startswith("no watermark")
    assert str(reason(position=DirectoryPosition("DC2", 120))).startswith("another domain")
    assert str(reason(fingerprint="other")).startswith("the source settings")
    assert str(reason(position=DirectoryPosition("DC1", 50))).startswith(
        "the domain controller's mark went back from USN 100 to USN 50"
    )
    old = SourceWatermark("DC1", 100, "fp", now, now - timedelta(hours=25))
    assert "older than incremental.full_every_hours=24" in str(reason(stored=old))


USER_IDS = st.sampled_from(["u1", "u2", "u3", "u4", "ü5"])
GROUP_NAMES = st.sampled_from(["team", "all", "ops", "squad", "Straße"])


@settings(max_examples=150, deadline=None)
@given(
    cached=st.lists(st.tuples(USER_IDS, GROUP_NAMES), unique=True, max_size=15),
    renamed=st.dictionaries(GROUP_NAMES, GROUP_NAMES, max_size=3),
    read=st.lists(st.tuples(USER_IDS, GROUP_NAMES), max_size=8),
    changed_users=st.sets(USER_IDS, max_size=3),
    known_users=st.sets(USER_IDS),
    users_memberships=st.booleans(),
    categorical=st.booleans(),
    reuse_users=st.booleans(),
)
def test_merged_memberships_follow_the_rules_whatever_the_cached_form(
    cached: list[tuple[str, str]],
    renamed: dict[str, str],
    read: list[tuple[str, str]],
    changed_users: set[str],
    known_users: set[str],
    users_memberships: bool,
    categorical: bool,
    reuse_users: bool,
) -> None:
    """Oracle from the rules alone: a cached row stays unless its group was read (under its old
    or its new name) or, with memberOf read, its user was; every row read is added once. A
    changed user's row replaces the cached one or, for a new user, is added; without
    `reuse_users` the cached users are left as they were."""
    # What a read can return: members of the groups it read, and (memberOf read) groups of
    # the users it read.
    read = [
        (u, g)
        for u, g in read
        if g in renamed.values() or (users_memberships and u in changed_users)
    ]
    names = sorted({g for _, g in cached} | set(renamed) | set(renamed.values()))
    ids = {name: f"g-{i}" for i, name in enumerate(names)}
    cached_groups = groups(*((ids[n], n, f"CN={n}") for n in names if n not in renamed.values()))
    read_groups = groups(*((ids[old], new, f"CN={new}") for old, new in renamed.items()))
    cached_users = users(*((u, f"CN={u}", True, f"{u}@x") for u in sorted(known_users)))
    before = cached_users.copy()
    changes = DirectoryChanges(
        users=users(*((u, f"CN={u}", u != "u2", f"{u}@y") for u in sorted(changed_users))),
        groups=read_groups,
        memberships=memberships(*read),
        all_groups=False,
        users_memberships=users_memberships,
    )
    cached_frame = memberships(*cached)
    if categorical:
        cached_frame = cached_frame.astype("category")

    merged_users, _, merged = merge_changes(
        cached_users, cached_groups, cached_frame, changes, reuse_users=reuse_users
    )

    rows = {u: (f"CN={u}", True, f"{u}@x") for u in known_users}
    rows |= {u: (f"CN={u}", u != "u2", f"{u}@y") for u in changed_users}
    got = merged_users[["source_id", "locator", "active", "mail"]].to_numpy().tolist()
    assert sorted(map(tuple, got)) == sorted((u, *row) for u, row in rows.items())
    if not reuse_users:
        pd.testing.assert_frame_equal(cached_users, before)

    gone_groups = set(renamed) | set(renamed.values())
    expected = {
        (u, g)
        for u, g in cached
        if g not in gone_groups and not (users_memberships and u in changed_users)
    } | set(read)
    assert pairs(merged) == sorted(expected)
    assert len(merged) == len(expected)  # each membership once


@pytest.mark.parametrize("reuse_users", [False, True])
def test_a_changed_user_listed_twice_in_the_cache_is_one_row_after_the_merge(
    reuse_users: bool,
) -> None:
    """A cache should never hold one id twice; if it does, the changed user still replaces
    both rows (the rows are not rewritten in place one by one)."""
    cached_users = users(("u1", "CN=a", True, "a@x"), ("u1", "CN=a2", True, "a2@x"))
    changes = DirectoryChanges(
        users=users(("u1", "CN=a", True, "new@x")),
        groups=groups(),
        memberships=memberships(),
        all_groups=False,
    )
    merged_users, _, _ = merge_changes(
        cached_users, CACHED_GROUPS, CACHED_MEMBERS, changes, reuse_users=reuse_users
    )
    assert merged_users[["source_id", "mail"]].to_numpy().tolist() == [["u1", "new@x"]]
