"""The contract every target client passes against its product's emulator, over real HTTP.

Product-neutral: it uses only the `Target` interface and the harness protocol of
`tests/targets/conftest.py` (seed_user / seed_group / app.faults / app.requests, make_target,
page_size, waits), plus `emulator.rename_user(username, new_name)`, which renames an account
the way an administrator would by hand in the product (its key stays), and the "applied-"
faults of `usersync_sandbox.faults` (the product does the work, its answer is lost). Every
write is read back with a fresh client, as a user would check it in the product; fault tests
prove what the client waited, how often it asked, and that a write whose answer was lost was
done exactly once. Each harness signs its main client in as an account named "admin".
"""

from __future__ import annotations

import pandas as pd
import pytest
from usersync_sandbox.faults import WRITE_METHODS, RecordedRequest

from tests.targets.conftest import TargetEnv
from usersync.capabilities import AccountGroupsReader, offers
from usersync.errors import (
    TargetAuthError,
    TargetConflictError,
    TargetNotFoundError,
    TargetPermissionError,
    TargetRejectedError,
    TransientError,
)
from usersync.model import TARGET_GROUP_COLUMNS, TARGET_MEMBERSHIP_COLUMNS, TARGET_USER_COLUMNS
from usersync.targets.base import normalise_name

#: The account every harness signs its main client in as.
ADMIN_ACCOUNT = "admin"

#: Tests no product version changes (injected faults, names refused before any request): they
#: run against each product's newest version only, the others against every supported one.
VERSION_INDEPENDENT = frozenset(
    {
        "test_rate_limited_read_waits_what_the_server_asked_then_succeeds",
        "test_rate_limited_write_is_sent_again_once",
        "test_dropped_connection_on_a_read_is_retried",
        "test_server_error_storm_exhausts_the_attempts",
        "test_create_user_whose_answer_is_lost_is_done_once",
        "test_create_group_whose_answer_is_lost_is_done_once",
        "test_create_refused_before_the_product_did_anything_is_sent_again",
        "test_refused_names_are_refused_before_any_request",
    }
)


def by_name(users: pd.DataFrame) -> dict[str, dict]:
    """Rows of a users frame keyed by the normalised username."""
    return {normalise_name(row["username"]): row for row in users.to_dict("records")}


def members(frame: pd.DataFrame) -> set[tuple[str, str]]:
    """(group, username) pairs of a memberships frame, normalised."""
    return {
        (normalise_name(group), normalise_name(user))
        for group, user in zip(frame["group"], frame["username"], strict=True)
    }


def read_user(env: TargetEnv, username: str) -> dict | None:
    """The account as a fresh client sees it, or None."""
    with env.make_target() as fresh:
        users = fresh.read_users([username])
    return by_name(users).get(normalise_name(username))


def read_group(env: TargetEnv, group: str) -> tuple[bool, set[str]]:
    """(exists, member usernames) as a fresh client sees them."""
    with env.make_target() as fresh:
        groups, memberships = fresh.read_groups([group])
    exists = normalise_name(group) in {normalise_name(g) for g in groups["group"]}
    return exists, {user for _, user in members(memberships)}


# -- users ---------------------------------------------------------------------------------


def test_create_user_then_read_back(target_env: TargetEnv) -> None:
    key = target_env.target.create_user("anna.lee", "anna.lee@example.com", "Anna Lee")

    user = read_user(target_env, "anna.lee")
    assert user is not None
    assert key and user["target_key"] == key
    assert user["email"] == "anna.lee@example.com"
    assert user["display_name"] == "Anna Lee"
    assert user["active"] is True


def test_read_users_frame_has_the_documented_columns(target_env: TargetEnv) -> None:
    target_env.emulator.seed_user("bob", "bob@example.com", "Bob Builder")

    users = target_env.target.read_users(["bob", "nobody-here"])

    assert list(users.columns[: len(TARGET_USER_COLUMNS)]) == list(TARGET_USER_COLUMNS)
    assert list(by_name(users)) == ["bob"]


def test_read_users_is_case_insensitive_and_includes_inactive(target_env: TargetEnv) -> None:
    target_env.emulator.seed_user("carol", "carol@example.com", "Carol Kahn", active=False)

    users = by_name(target_env.target.read_users(["CAROL"]))

    assert users["carol"]["active"] is False
    assert users["carol"]["email"] == "carol@example.com"


def test_read_users_of_nobody_is_empty(target_env: TargetEnv) -> None:
    users = target_env.target.read_users([])
    assert users.empty
    assert target_env.target.read_users(["ghost"]).empty


def test_read_users_across_several_pages(target_env: TargetEnv) -> None:
    count = 3 * target_env.page_size + 2
    for i in range(count):
        target_env.emulator.seed_user(
            f"user{i:03d}", f"user{i:03d}@example.com", f"User {i:03d}", active=i % 5 != 0
        )
    # Users the run does not ask about share the prefix and must not come back.
    for i in range(target_env.page_size):
        target_env.emulator.seed_user(f"user9{i:02d}", f"other{i}@example.com", f"Other {i}")
    wanted = [f"user{i:03d}" for i in range(count)]

    users = by_name(target_env.target.read_users([*wanted, "missing-user"]))

    assert sorted(users) == wanted
    assert users["user005"]["active"] is False
    assert users["user006"]["active"] is True
    assert len({row["target_key"] for row in users.values()}) == count


def test_create_existing_user_is_a_conflict(target_env: TargetEnv) -> None:
    target_env.emulator.seed_user("dave", "dave@example.com", "Dave Old")

    with pytest.raises(TargetConflictError):
        target_env.target.create_user("dave", "other@example.com", "Dave New")

    user = read_user(target_env, "dave")
    assert user is not None and user["email"] == "dave@example.com"


def test_update_user_email_and_display_name(target_env: TargetEnv) -> None:
    target_env.emulator.seed_user("erin", "erin@old.example.com", "Erin Old")
    before = read_user(target_env, "erin")

    target_env.target.update_user(
        "erin", {"email": "erin@new.example.com", "display_name": "Erin New"}
    )

    after = read_user(target_env, "erin")
    assert after is not None and before is not None
    assert after["email"] == "erin@new.example.com"
    assert after["display_name"] == "Erin New"
    assert after["target_key"] == before["target_key"]


def test_update_missing_user_is_not_found(target_env: TargetEnv) -> None:
    with pytest.raises(TargetNotFoundError):
        target_env.target.update_user("ghost", {"display_name": "Nobody"})


def test_deactivate_and_reactivate_are_idempotent(target_env: TargetEnv) -> None:
    target_env.emulator.seed_user("frank", "frank@example.com", "Frank Active")

    target_env.target.deactivate_user("frank")
    target_env.target.deactivate_user("frank")
    user = read_user(target_env, "frank")
    assert user is not None and user["active"] is False

    target_env.target.reactivate_user("frank")
    target_env.target.reactivate_user("frank")
    user = read_user(target_env, "frank")
    assert user is not None and user["active"] is True


def test_deactivate_missing_user_is_not_found(target_env: TargetEnv) -> None:
    with pytest.raises(TargetNotFoundError):
        target_env.target.deactivate_user("ghost")


# -- groups --------------------------------------------------------------------------------


def test_create_group_then_read_back(target_env: TargetEnv) -> None:
    target_env.target.create_group("developers")

    assert read_group(target_env, "developers") == (True, set())
    with pytest.raises(TargetConflictError):
        target_env.target.create_group("developers")


def test_read_groups_frames(target_env: TargetEnv) -> None:
    target_env.emulator.seed_user("gina", "gina@example.com", "Gina")
    target_env.emulator.seed_group("testers", members=["gina"])

    groups, memberships = target_env.target.read_groups(["TESTERS", "no-such-group"])

    assert list(groups.columns[: len(TARGET_GROUP_COLUMNS)]) == list(TARGET_GROUP_COLUMNS)
    assert list(memberships.columns[: len(TARGET_MEMBERSHIP_COLUMNS)]) == list(
        TARGET_MEMBERSHIP_COLUMNS
    )
    assert [normalise_name(g) for g in groups["group"]] == ["testers"]
    assert members(memberships) == {("testers", "gina")}


def test_read_group_members_across_several_pages(target_env: TargetEnv) -> None:
    count = 3 * target_env.page_size + 1
    names = [f"member{i:03d}" for i in range(count)]
    for i, name in enumerate(names):
        # Inactive members are members too: the planner must see them.
        target_env.emulator.seed_user(name, f"{name}@example.com", f"Member {i}", active=i % 4 != 0)
    target_env.emulator.seed_group("big-group", members=names)
    target_env.emulator.seed_group("small-group", members=names[:2])

    groups, memberships = target_env.target.read_groups(["big-group", "small-group"])

    assert {normalise_name(g) for g in groups["group"]} == {"big-group", "small-group"}
    assert members(memberships) == {("big-group", n) for n in names} | {
        ("small-group", n) for n in names[:2]
    }


def test_every_group_of_an_account_is_read(target_env: TargetEnv) -> None:
    if not offers(target_env.target, AccountGroupsReader):
        pytest.skip(f"{target_env.product}: keep_existing_groups: false is refused at validate")
    groups = [f"team-{i:02d}" for i in range(2 * target_env.page_size + 1)]
    target_env.emulator.seed_user("many", "many@example.com", "Many Groups")
    target_env.emulator.seed_user("few", "few@example.com", "Few Groups")
    for group in groups:
        target_env.emulator.seed_group(group, members=["many"])
    target_env.emulator.seed_group("solo", members=["few"])

    found = target_env.target.read_user_groups(["many", "few", "nobody-here"])

    assert members(found) == {(g, "many") for g in groups} | {("solo", "few")}


def test_membership_changes_are_idempotent(target_env: TargetEnv) -> None:
    target_env.emulator.seed_user("hank", "hank@example.com", "Hank")
    target_env.emulator.seed_user("ivy", "ivy@example.com", "Ivy")
    target_env.emulator.seed_group("ops", members=["ivy"])

    target_env.target.add_member("ops", "hank")
    target_env.target.add_member("ops", "hank")  # already a member: done
    target_env.target.add_member("ops", "ivy")  # seeded member: done
    assert read_group(target_env, "ops") == (True, {"hank", "ivy"})

    target_env.target.remove_member("ops", "ivy")
    target_env.target.remove_member("ops", "ivy")  # no longer a member: done
    assert read_group(target_env, "ops") == (True, {"hank"})


def test_add_member_of_missing_user_or_group_is_not_found(target_env: TargetEnv) -> None:
    target_env.emulator.seed_user("jack", "jack@example.com", "Jack")
    target_env.emulator.seed_group("qa")

    with pytest.raises(TargetNotFoundError):
        target_env.target.add_member("no-such-group", "jack")
    with pytest.raises(TargetNotFoundError):
        target_env.target.add_member("qa", "ghost")
    assert read_group(target_env, "qa") == (True, set())


def test_names_with_spaces_at_signs_plus_and_non_ascii(target_env: TargetEnv) -> None:
    users = {
        "jörg.müller": ("jorg@example.com", "Jörg Müller"),
        "dev@example.com": ("dev@example.com", "Zoë Ñúñez"),
        "ana-maria_ok": ("ana@example.com", "Ana-María O'Kelly"),
    }
    groups = ["team blue + green", "équipe@paris", "r&d 100%"]
    keys = {name: target_env.target.create_user(name, *attrs) for name, attrs in users.items()}
    for group in groups:
        target_env.target.create_group(group)
        for name in users:
            target_env.target.add_member(group, name)
    target_env.target.remove_member(groups[0], "dev@example.com")

    with target_env.make_target() as fresh:
        found = by_name(fresh.read_users([name.upper() for name in users]))
        found_groups, memberships = fresh.read_groups(groups)
    assert {name: row["target_key"] for name, row in found.items()} == keys
    assert {name: (row["email"], row["display_name"]) for name, row in found.items()} == users
    assert {normalise_name(g) for g in found_groups["group"]} == set(groups)
    expected = {(g, n) for g in groups for n in users} - {(groups[0], "dev@example.com")}
    assert members(memberships) == expected


# -- faults --------------------------------------------------------------------------------


def test_rate_limited_read_waits_what_the_server_asked_then_succeeds(
    target_env: TargetEnv,
) -> None:
    target_env.emulator.seed_user("kate", "kate@example.com", "Kate")
    target_env.emulator.app.faults.retry_after_seconds = 7
    target_env.emulator.app.faults.script.append("429")
    target_env.emulator.app.clear_log()

    users = by_name(target_env.target.read_users(["kate"]))

    assert "kate" in users
    assert target_env.waits == [7.0]
    assert [r.status for r in target_env.emulator.app.requests].count(429) == 1


def test_rate_limited_write_is_sent_again_once(target_env: TargetEnv) -> None:
    target_env.emulator.app.faults.retry_after_seconds = 3
    target_env.emulator.app.faults.script.append("429")
    target_env.emulator.app.clear_log()

    target_env.target.create_group("rate-limited")

    assert target_env.waits == [3.0]
    statuses = [r.status for r in target_env.emulator.app.writes()]
    assert statuses[0] == 429 and len(statuses) == 2 and 200 <= statuses[1] < 300
    assert read_group(target_env, "rate-limited") == (True, set())


def test_dropped_connection_on_a_read_is_retried(target_env: TargetEnv) -> None:
    target_env.emulator.seed_user("liam", "liam@example.com", "Liam")
    target_env.emulator.app.faults.script.append("drop")
    target_env.emulator.app.clear_log()

    users = by_name(target_env.target.read_users(["liam"]))

    assert "liam" in users
    assert len(target_env.waits) == 1
    assert [r.status for r in target_env.emulator.app.requests].count(-1) == 1


def test_server_error_storm_exhausts_the_attempts(target_env: TargetEnv) -> None:
    target_env.emulator.seed_user("mia", "mia@example.com", "Mia")
    target_env.emulator.app.faults.error_every = 1
    target_env.emulator.app.clear_log()

    with pytest.raises(TransientError):
        target_env.target.read_users(["mia"])

    statuses = [r.status for r in target_env.emulator.app.requests]
    assert len(statuses) > 1 and set(statuses) == {500}
    assert len(target_env.waits) == len(statuses) - 1


# -- credentials and permissions -----------------------------------------------------------


def test_check_passes_for_the_admin_account(target_env: TargetEnv) -> None:
    result = target_env.target.check()
    assert result.ok, result.detail
    assert not target_env.emulator.app.writes()


def test_wrong_credentials_are_refused(target_env: TargetEnv) -> None:
    with target_env.make_target(credentials="wrong") as wrong:
        result = wrong.check()
        assert not result.ok and result.detail
        with pytest.raises(TargetAuthError):
            wrong.read_users(["anyone"])


def test_non_admin_account_cannot_write(target_env: TargetEnv) -> None:
    target_env.emulator.seed_user("nora", "nora@example.com", "Nora")
    with target_env.make_target(credentials="user") as user:
        result = user.check()
        assert not result.ok and result.detail
        with pytest.raises(TargetPermissionError):
            user.create_user("olga", "olga@example.com", "Olga")
        with pytest.raises(TargetPermissionError):
            user.create_group("sneaky")
        with pytest.raises(TargetPermissionError):
            user.deactivate_user("nora")

    assert read_user(target_env, "olga") is None
    assert read_group(target_env, "sneaky") == (False, set())
    nora = read_user(target_env, "nora")
    assert nora is not None and nora["active"] is True


def lose_the_next_answer(env: TargetEnv, fault: str) -> None:
    """Give the next write `fault` ("applied-500": the product does it, the client hears 500)."""
    env.emulator.app.clear_log()
    env.emulator.app.faults.only_methods = tuple(sorted(WRITE_METHODS))
    env.emulator.app.faults.script.append(fault)


def sends_of_the_first_write(env: TargetEnv) -> list[RecordedRequest]:
    """Every request with the method and path of the first write since the log was cleared."""
    writes = env.emulator.app.writes()
    assert writes, "no write was sent"
    first = writes[0]
    return [w for w in writes if (w.method, w.path) == (first.method, first.path)]


# -- accounts by key -----------------------------------------------------------------------


def test_read_users_by_key_finds_an_account_renamed_by_hand(target_env: TargetEnv) -> None:
    key = target_env.target.create_user("rita.old", "rita@example.com", "Rita Renamed")
    target_env.emulator.rename_user("rita.old", "rita.new")

    with target_env.make_target() as fresh:
        users = fresh.read_users_by_key([key, "999999", "no-such-key"])
        assert fresh.read_users(["rita.old"]).empty

    assert list(users.columns[: len(TARGET_USER_COLUMNS)]) == list(TARGET_USER_COLUMNS)
    assert list(users["target_key"]) == [key]
    row = users.iloc[0]
    assert normalise_name(row["username"]) == "rita.new"
    assert row["display_name"] == "Rita Renamed"
    assert row["active"]


def test_read_users_by_key_of_nothing_is_empty(target_env: TargetEnv) -> None:
    assert target_env.target.read_users_by_key([]).empty
    assert target_env.target.read_users_by_key(["999999"]).empty


def test_read_state_by_names_and_keys_has_each_account_once(target_env: TargetEnv) -> None:
    sam = target_env.target.create_user("sam", "sam@example.com", "Sam")
    tess = target_env.target.create_user("tess.old", "tess@example.com", "Tess")
    target_env.emulator.rename_user("tess.old", "tess.new")

    with target_env.make_target() as fresh:
        state = fresh.read_state(["sam", "tess.old", "nobody"], [], keys=[sam, tess])

    keys, names = state.users["target_key"], state.users["username"]
    assert sorted(keys) == sorted([sam, tess])
    assert {k: normalise_name(n) for k, n in zip(keys, names, strict=True)} == {
        sam: "sam",
        tess: "tess.new",
    }


# -- the account usersync runs as ----------------------------------------------------------


def test_current_account_is_the_account_the_client_signs_in_as(target_env: TargetEnv) -> None:
    assert normalise_name(target_env.target.current_account() or "") == ADMIN_ACCOUNT

    with target_env.make_target(credentials="user") as plain:
        name = plain.current_account()
    assert target_env.emulator.app.writes() == []
    assert name and normalise_name(name) != ADMIN_ACCOUNT
    assert normalise_name(name) in by_name(target_env.target.read_users([name]))


# -- administrators, whom usersync must not take over -------------------------------------


def test_administrators_directly_and_through_a_group_not_ordinary_accounts(
    target_env: TargetEnv,
) -> None:
    emulator = target_env.emulator
    emulator.seed_user("Ada.Direct", "ada@example.com", "Ada Direct")
    emulator.seed_user("gus.grouped", "gus@example.com", "Gus Grouped")
    # Deactivated or unlicensed, still an administrator: adopting it would hand it over.
    emulator.seed_user("ivy.idle", "ivy@example.com", "Ivy Idle", active=False)
    emulator.seed_user("olly.ordinary", "olly@example.com", "Olly Ordinary")
    emulator.grant_admin("Ada.Direct")
    emulator.seed_admin_group(target_env.admin_group, members=["gus.grouped", "ivy.idle"])
    emulator.seed_group("staff", members=["gus.grouped", "olly.ordinary"])
    emulator.app.clear_log()

    with target_env.make_target() as fresh:
        admins = fresh.administrators()
    with target_env.make_target(credentials="user") as plain:
        plain_account = normalise_name(plain.current_account() or "")

    assert {"ada.direct", "gus.grouped", "ivy.idle", ADMIN_ACCOUNT} <= admins
    assert "olly.ordinary" not in admins
    assert plain_account and plain_account not in admins
    assert all(name == normalise_name(name) for name in admins)
    assert emulator.app.writes() == []


def test_administrators_across_several_pages(target_env: TargetEnv) -> None:
    count = target_env.page_size + 2
    direct = [f"direct{i:02d}" for i in range(count)]
    grouped = [f"grouped{i:02d}" for i in range(count)]
    for name in [*direct, *grouped, "bystander"]:
        target_env.emulator.seed_user(name, f"{name}@example.com", name.title())
    for name in direct:
        target_env.emulator.grant_admin(name)
    target_env.emulator.seed_admin_group(target_env.admin_group, members=grouped)
    target_env.emulator.seed_group("everyone", members=[*grouped, "bystander"])

    with target_env.make_target() as fresh:
        admins = fresh.administrators()

    assert set(direct) | set(grouped) <= admins
    assert "bystander" not in admins


# -- writes whose answer is lost -----------------------------------------------------------

LOST_ANSWERS = ["applied-500", "applied-503", "applied-drop"]


@pytest.mark.parametrize("fault", LOST_ANSWERS)
def test_create_user_whose_answer_is_lost_is_done_once(target_env: TargetEnv, fault: str) -> None:
    lose_the_next_answer(target_env, fault)

    key = target_env.target.create_user("una", "una@example.com", "Una Once")

    creates = sends_of_the_first_write(target_env)
    assert len(creates) == 1 and 200 <= creates[0].applied_status < 300
    user = read_user(target_env, "una")
    assert user is not None and user["target_key"] == key
    assert user["active"] is True  # licensed, usable: the recovered path finished the job
    assert user["display_name"] == "Una Once"


@pytest.mark.parametrize("fault", LOST_ANSWERS)
def test_create_group_whose_answer_is_lost_is_done_once(target_env: TargetEnv, fault: str) -> None:
    lose_the_next_answer(target_env, fault)

    target_env.target.create_group("lost-and-found")

    creates = sends_of_the_first_write(target_env)
    assert len(creates) == 1 and 200 <= creates[0].applied_status < 300
    assert read_group(target_env, "lost-and-found") == (True, set())


def test_create_refused_before_the_product_did_anything_is_sent_again(
    target_env: TargetEnv,
) -> None:
    lose_the_next_answer(target_env, "500")  # a 500 before any work: nothing to find

    key = target_env.target.create_user("vic", "vic@example.com", "Vic")

    creates = sends_of_the_first_write(target_env)
    assert len(creates) == 2
    assert (creates[0].status, creates[0].applied_status) == (500, 0)
    assert 200 <= creates[1].status < 300
    user = read_user(target_env, "vic")
    assert user is not None and user["target_key"] == key and user["active"] is True


def test_lost_answer_never_adopts_another_account_with_that_name(target_env: TargetEnv) -> None:
    target_env.emulator.seed_user("vera", "vera@example.com", "Vera")
    lose_the_next_answer(target_env, "500")

    with pytest.raises(TargetConflictError):
        target_env.target.create_user("vera", "someone.else@example.com", "Other Vera")

    user = read_user(target_env, "vera")
    assert user is not None and user["display_name"] == "Vera"


def test_lost_answer_then_the_account_it_would_have_made_counts_as_done(
    target_env: TargetEnv,
) -> None:
    # Same username and e-mail (any case): that is what the lost create made.
    target_env.emulator.seed_user("walt", "walt@example.com", "Walt")
    lose_the_next_answer(target_env, "503")

    key = target_env.target.create_user("walt", "WALT@Example.com", "Walt")

    user = read_user(target_env, "walt")
    assert user is not None and user["target_key"] == key


# -- names the products refuse -------------------------------------------------------------

#: Names no product is given: empty, blank, control characters (C0, DEL, C1), bidirectional
#: overrides and isolates (they make a name display as another), longer than 255 characters.
REFUSED_NAMES = [
    "",
    "   ",
    "nul\x00name",
    "bell\x07name",
    "tab\tname",
    "del\x7fname",
    "c1\x85name",
    "rlo\u202egnp.exe",
    "lri\u2066name\u2069",
    "x" * 256,
]


@pytest.mark.parametrize("name", REFUSED_NAMES)
def test_refused_names_are_refused_before_any_request(target_env: TargetEnv, name: str) -> None:
    target_env.emulator.seed_user("yara", "yara@example.com", "Yara")
    target_env.emulator.app.clear_log()

    assert target_env.target.refused_name("user", name)
    assert target_env.target.refused_name("group", name)
    with pytest.raises(TargetRejectedError):
        target_env.target.create_user(name, "x@example.com", "X")
    with pytest.raises(TargetRejectedError):
        target_env.target.create_group(name)
    with pytest.raises(TargetRejectedError):
        target_env.target.update_user("yara", {"username": name})

    assert target_env.emulator.app.requests == []
    assert read_user(target_env, "yara") is not None


def test_names_every_product_takes_are_not_refused(target_env: TargetEnv) -> None:
    for name in ("jörg.müller", "dev@example.com", "ana-maria_ok", "x" * 255):
        assert target_env.target.refused_name("user", name) is None, name
    for group in ("team blue + green", "équipe@paris", "r&d 100%", "g" * 255):
        assert target_env.target.refused_name("group", group) is None, group


# -- values as the products store them ------------------------------------------------------


def assert_stored_as_desired(env: TargetEnv, desired: pd.DataFrame) -> None:
    """The account reads back exactly as `stored_form(desired)` says (unknown values aside)."""
    expected = env.target.stored_form(desired).iloc[0]
    user = read_user(env, expected["username"])
    assert user is not None
    for attribute in ("username", "email", "display_name"):
        if not pd.isna(user[attribute]):  # NA: the product will not say (never compared)
            assert user[attribute] == expected[attribute], attribute


def test_values_read_back_as_their_stored_form(target_env: TargetEnv) -> None:
    desired = pd.DataFrame(
        {
            "username": ["Pat.Stored"],
            "email": ["  Pat.Stored@Example.COM "],
            "display_name": ["  Pat Stored\t"],
        }
    )
    target_env.target.create_user(*desired.iloc[0])
    assert_stored_as_desired(target_env, desired)

    stored_name = target_env.target.stored_form(desired).iloc[0]["username"]
    changed = desired.assign(email=[" pat.new@example.com  "], display_name=[" Pat  New "])
    target_env.target.update_user(
        stored_name,
        {"email": changed.iloc[0]["email"], "display_name": changed.iloc[0]["display_name"]},
        desired=dict(changed.iloc[0]),
    )
    assert_stored_as_desired(target_env, changed)


def test_update_with_desired_values_changes_only_what_changed(target_env: TargetEnv) -> None:
    target_env.emulator.seed_user("xena", "xena@example.com", "Xena Old")

    target_env.target.update_user(
        "xena",
        {"display_name": "Xena New"},
        desired={"username": "xena", "email": "xena@example.com", "display_name": "Xena New"},
    )

    user = read_user(target_env, "xena")
    assert user is not None and user["display_name"] == "Xena New"
    assert pd.isna(user["email"]) or user["email"] == "xena@example.com"
