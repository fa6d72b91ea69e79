"""The contract every source passes against its real server (or the sandbox's emulator).

One scenario (`harness.SCENARIO`: a disabled user, non-ASCII names and login, a non-ASCII group,
enough users for four pages) is written into each source the way that source is written to;
each test reads it back through the `Source` interface only and asserts what the engine relies
on: the declared tables, every user exactly once with a unique id, memberships naming read
users and groups, a disabled user inactive, names as written, and a read that fails part-way
raising rather than returning less. What only some sources can do (`usersync.capabilities`:
incremental reads, attribute checks, single-user lookups) is tested where the source offers it.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from tests.sources.harness import BOB, CUT_POINTS, SCENARIO, SOREN, ZOE, SourceEnv
from usersync.capabilities import AttributeChecker, IncrementalSource, UserLookup, offers
from usersync.errors import SourceError
from usersync.model import (
    SOURCE_GROUP_COLUMNS,
    SOURCE_MEMBERSHIP_COLUMNS,
    SOURCE_USER_COLUMNS,
    SourceSnapshot,
)
from usersync.sources.watermark import advance_watermark, extract_with_watermark
from usersync.store import Store

#: Every source, each with the marker of the server it needs (`make test-fast` leaves those out).
SOURCES = [
    pytest.param("openldap", marks=pytest.mark.slapd),
    pytest.param("samba", marks=pytest.mark.samba),
    pytest.param("scim"),
    pytest.param("inbox"),
    pytest.param("miniorange"),
]


@pytest.fixture(scope="module", params=SOURCES)
def source_env(request: pytest.FixtureRequest) -> Iterator[SourceEnv]:
    harness = importlib.import_module(f"tests.sources.harness_{request.param}")
    with harness.environment(request) as env:
        yield env


@pytest.fixture(scope="module")
def snapshot(source_env: SourceEnv) -> SourceSnapshot:
    with source_env.open_source() as source:
        return source.extract(source_env.attributes)


def users_by_login(env: SourceEnv, snapshot: SourceSnapshot) -> dict[str, dict]:
    login = env.fields["login"]
    return {row[login]: row for row in snapshot.users.to_dict("records")}


def member_logins(env: SourceEnv, snapshot: SourceSnapshot) -> dict[str, set[str]]:
    """group name -> logins of its members, as the snapshot says."""
    login_of = dict(
        zip(snapshot.users["source_id"], snapshot.users[env.fields["login"]], strict=True)
    )
    groups: dict[str, set[str]] = {}
    for source_id, group in snapshot.memberships.itertuples(index=False, name=None):
        groups.setdefault(str(group), set()).add(login_of[source_id])
    return groups


# -- the tables --------------------------------------------------------------------------------


def test_tables_have_the_declared_columns_and_types(
    source_env: SourceEnv, snapshot: SourceSnapshot
) -> None:
    users = snapshot.users
    assert list(users.columns[: len(SOURCE_USER_COLUMNS)]) == list(SOURCE_USER_COLUMNS)
    for column, dtype in SOURCE_USER_COLUMNS.items():
        assert users[column].dtype == dtype, column
    for attribute in source_env.attributes:  # one string column per attribute asked for
        assert users[attribute].dtype == "string", attribute
    assert list(snapshot.groups.columns) == list(SOURCE_GROUP_COLUMNS)
    assert list(snapshot.memberships.columns) == list(SOURCE_MEMBERSHIP_COLUMNS)


def test_every_user_is_read_exactly_once_across_pages(
    source_env: SourceEnv, snapshot: SourceSnapshot
) -> None:
    if source_env.page_size is not None:  # the scenario must span several pages
        assert len(SCENARIO.users) > 3 * source_env.page_size
    logins = snapshot.users[source_env.fields["login"]].tolist()
    assert sorted(logins) == sorted(u.login for u in SCENARIO.users)
    ids = snapshot.users["source_id"]
    assert ids.notna().all() and ids.is_unique


def test_users_carry_what_the_source_holds(source_env: SourceEnv, snapshot: SourceSnapshot) -> None:
    users = users_by_login(source_env, snapshot)
    fields = source_env.fields
    for expected in SCENARIO.users:
        got = users[expected.login]
        assert got[fields["email"]] == expected.email
        assert (got[fields["given"]], got[fields["family"]]) == (expected.given, expected.family)


def test_a_disabled_user_is_inactive_and_the_others_active(
    source_env: SourceEnv, snapshot: SourceSnapshot
) -> None:
    active = {
        login: bool(row["active"]) for login, row in users_by_login(source_env, snapshot).items()
    }
    assert active == {u.login: u.active for u in SCENARIO.users}
    assert active[BOB.login] is False


def test_non_ascii_names_round_trip(source_env: SourceEnv, snapshot: SourceSnapshot) -> None:
    users = users_by_login(source_env, snapshot)
    fields = source_env.fields
    assert users[ZOE.login][fields["given"]] == "Zoë"
    assert users[SOREN.login][fields["family"]] == "Kierkegård"
    if source_env.reads_groups:
        assert "Équipe" in set(snapshot.groups["source_group"])


def test_ids_are_the_same_on_the_next_read(source_env: SourceEnv, snapshot: SourceSnapshot) -> None:
    with source_env.open_source() as source:
        again = source.extract(source_env.attributes)
    login = source_env.fields["login"]
    first = dict(zip(snapshot.users[login], snapshot.users["source_id"], strict=True))
    assert dict(zip(again.users[login], again.users["source_id"], strict=True)) == first


# -- groups and memberships ----------------------------------------------------------------


def test_groups_and_their_members_are_as_written(
    source_env: SourceEnv, snapshot: SourceSnapshot
) -> None:
    if not source_env.reads_groups:
        assert snapshot.groups.empty and snapshot.memberships.empty
        assert any("groups are not read" in note for note in snapshot.notes)
        return
    assert sorted(snapshot.groups["source_group"]) == sorted(SCENARIO.groups)
    assert snapshot.groups["source_group_id"].notna().all()
    assert snapshot.groups["source_group_id"].is_unique
    expected = {name: set(members) for name, members in SCENARIO.groups.items()}
    assert member_logins(source_env, snapshot) == expected


def test_every_membership_names_a_read_user_and_group(snapshot: SourceSnapshot) -> None:
    memberships = snapshot.memberships
    assert memberships["source_id"].isin(snapshot.users["source_id"]).all()
    assert memberships["source_group"].isin(snapshot.groups["source_group"]).all()
    assert not memberships.duplicated().any()


# -- failures ----------------------------------------------------------------------------------


@pytest.mark.parametrize("cut", sorted(CUT_POINTS))
def test_a_read_that_fails_part_way_raises_and_returns_nothing(
    source_env: SourceEnv, cut: str, request: pytest.FixtureRequest
) -> None:
    if cut in source_env.known_gaps:
        request.applymarker(pytest.mark.xfail(reason=source_env.known_gaps[cut], strict=True))
    returned = None
    with source_env.failing_read(CUT_POINTS[cut]) as source, pytest.raises(SourceError):
        returned = source.extract(source_env.attributes)
    assert returned is None


def test_check_passes_and_reads_nothing_it_should_not(source_env: SourceEnv) -> None:
    with source_env.open_source() as source:
        checked = source.check()
    assert checked.ok, checked.detail


# -- capabilities some sources have ------------------------------------------------------------


def test_an_incremental_read_sees_a_change_and_agrees_with_a_full_read(
    source_env: SourceEnv, tmp_path: Path
) -> None:
    with source_env.open_source() as probe:
        if not offers(probe, IncrementalSource):
            pytest.skip(f"{source_env.name} offers no incremental reads")
    assert source_env.set_given_name is not None, "the harness must be able to change a user"
    attributes = source_env.attributes
    store = Store.open(f"sqlite:///{tmp_path / 'store.db'}")
    try:
        with source_env.open_source() as source:
            first = extract_with_watermark(source, "contract", attributes, store)
        advance_watermark(store, first, statuses=["succeeded"], dry_run=False)
        source_env.set_given_name(ZOE.login, "Zoé")
        with source_env.open_source() as source:
            second = extract_with_watermark(source, "contract", attributes, store)
            full = source.extract(attributes)
    finally:
        source_env.set_given_name(ZOE.login, ZOE.given)
        store.close()
    assert any(note.startswith("full read") for note in first.notes), first.notes
    assert any(note.startswith("incremental") for note in second.notes), second.notes
    assert users_by_login(source_env, second)[ZOE.login][source_env.fields["given"]] == "Zoé"
    assert_same_snapshot(source_env, second, full)


def assert_same_snapshot(env: SourceEnv, got: SourceSnapshot, expected: SourceSnapshot) -> None:
    login = env.fields["login"]
    columns = ["source_id", "active", *env.attributes]

    def users(s: SourceSnapshot) -> pd.DataFrame:
        return s.users[columns].astype(object).sort_values(login).reset_index(drop=True)

    pd.testing.assert_frame_equal(users(got), users(expected))
    assert member_logins(env, got) == member_logins(env, expected)


def test_attribute_check_tells_a_misspelt_attribute_from_a_real_one(source_env: SourceEnv) -> None:
    with source_env.open_source() as source:
        if not offers(source, AttributeChecker):
            pytest.skip(f"{source_env.name} cannot check attribute names")
        known = source.check_attributes(source_env.attributes)
        misspelt = source.check_attributes([*source_env.attributes, "mial"])
    assert known.ok, known.detail
    assert not misspelt.ok and "mial" in misspelt.detail


def test_looking_one_user_up_finds_what_a_full_read_holds(
    source_env: SourceEnv, snapshot: SourceSnapshot
) -> None:
    login = source_env.fields["login"]
    with source_env.open_source() as source:
        if not offers(source, UserLookup):
            pytest.skip(f"{source_env.name} cannot look one user up")
        found = source.find_users(login, ZOE.login, source_env.attributes)
        nobody = source.find_users(login, "nobody-here", source_env.attributes)
        groups, _notes = source.user_groups(str(found.iloc[0]["locator"]))
    assert nobody.empty
    assert len(found) == 1
    expected = users_by_login(source_env, snapshot)[ZOE.login]
    assert found.iloc[0]["source_id"] == expected["source_id"]
    assert found.iloc[0][source_env.fields["given"]] == ZOE.given
    assert sorted(groups) == sorted(g for g, m in SCENARIO.groups.items() if ZOE.login in m)
