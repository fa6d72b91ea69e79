"""Jira specifics the contract suite cannot know: search windows, /user/list, keys, PATs.

Everything runs against `JiraEmulator` over real HTTP through the contract harness, so each
test checks what an administrator would see in Jira (or in its request log), not how the
client got there.
"""

from __future__ import annotations

import logging
import socket

import httpx
import pandas as pd
import pytest
from usersync_sandbox.jira import JiraEmulator
from usersync_sandbox.server import serve

from tests.targets.harness_jira import ADMIN, CONTEXT_PATH, NON_ADMIN, environment
from usersync.config import TargetConfig
from usersync.errors import ConfigError, TargetConflictError, TargetRejectedError
from usersync.targets import open_target
from usersync.targets.jira import JiraTarget


def searches(emulator: JiraEmulator) -> list[dict[str, str]]:
    return [r.query for r in emulator.app.requests if r.path.endswith("/user/search")]


def requested_paths(emulator: JiraEmulator) -> set[str]:
    return {r.path.removeprefix(CONTEXT_PATH + "/rest/api/2") for r in emulator.app.requests}


# 10.1 (before /user/list) with the window of 100 the client assumes from 10 (JRASERVER-78520;
# the supported 10.3 declares 1000, 11.3 declares 100 but has /user/list).
@pytest.mark.parametrize(("version", "window"), [("9.12.0", 1000), ("10.1.0", 100)])
def test_search_window_is_split_by_prefix_until_every_user_is_found(
    version: str, window: int
) -> None:
    with environment(version=version, max_page_size=window, search_window=window) as env:
        for i in range(1500):
            active = i % 7 != 0
            env.emulator.seed_user(f"user{i:04d}", f"u{i}@example.com", f"User {i}", active)
        # A name equal to a crowded prefix can only be looked up directly.
        env.emulator.seed_user("user", "plain@example.com", "Plain")
        # The prefix "u" also matches these through their display names and e-mails.
        for i in range(30):
            env.emulator.seed_user(f"zed{i}", f"user.zed{i}@example.com", f"User Zed {i}")
        wanted = [f"user{i:04d}" for i in range(0, 1500, 2)] + ["user", "unknown-user"]
        env.emulator.app.clear_log()

        users = env.make_target(lookup_threshold=30).read_users(wanted)

        assert sorted(users["username"]) == sorted(wanted[:-1])
        assert users["target_key"].is_unique
        assert not users.set_index("username").loc["user0014", "active"]
        # The client never asked past the window (Jira answers such pages empty).
        assert all(int(q["startAt"]) < window for q in searches(env.emulator))
        assert all(q["includeInactive"] == "true" for q in searches(env.emulator))
        # Prefix splitting, not a lookup per name: 752 names in far fewer requests.
        assert len(env.emulator.app.requests) < 120


def test_user_list_is_used_from_10_3() -> None:
    with environment(version="10.3.0") as env:
        for i in range(40):
            env.emulator.seed_user(f"list{i:02d}", f"l{i}@example.com", f"List {i}", i % 3 != 0)
        env.emulator.app.clear_log()

        users = env.make_target(lookup_threshold=10).read_users([f"LIST{i:02d}" for i in range(40)])

        assert len(users) == 40
        assert set(users["active"]) == {True, False}
        assert "/user/list" in requested_paths(env.emulator)
        assert "/user/search" not in requested_paths(env.emulator)


def test_user_list_does_not_exist_before_10_3() -> None:
    with environment(version="10.2.0") as env:
        base = env.target.url + "/rest/api/2"
        answer = httpx.get(f"{base}/user/list", auth=ADMIN)
        assert answer.status_code == 404
        env.emulator.seed_user("ann", "ann@example.com", "Ann")
        env.emulator.seed_user("anna", "anna@example.com", "Anna")
        env.emulator.seed_user("bert", "bert@example.com", "Bert")
        env.emulator.seed_user("bea", "bea@example.com", "Bea")

        users = env.make_target(lookup_threshold=1).read_users(["ann", "anna", "bert", "nobody"])

        assert sorted(users["username"]) == ["ann", "anna", "bert"]


def test_a_few_names_are_looked_up_one_by_one() -> None:
    with environment() as env:
        env.emulator.seed_user("solo", "solo@example.com", "Solo")
        env.emulator.app.clear_log()

        users = env.make_target(lookup_threshold=30).read_users(["solo", "ghost"])

        assert list(users["username"]) == ["solo"]
        assert requested_paths(env.emulator) == {"/user"}
        assert len(env.emulator.app.requests) == 2


def test_rename_keeps_the_key_and_the_memberships() -> None:
    with environment() as env:
        key = env.target.create_user("old.name", "person@example.com", "Person")
        env.target.create_group("crew")
        env.target.add_member("crew", "old.name")

        env.target.update_user("old.name", {"username": "new.name", "email": "p2@example.com"})

        fresh = env.make_target()
        users = fresh.read_users(["old.name", "new.name"])
        assert list(users["username"]) == ["new.name"]
        assert list(users["target_key"]) == [key]
        assert list(users["email"]) == ["p2@example.com"]
        assert key.startswith("JIRAUSER")
        _, members = fresh.read_groups(["crew"])
        assert list(members["username"]) == ["new.name"]


def test_rename_onto_a_taken_name_is_a_conflict() -> None:
    with environment() as env:
        env.emulator.seed_user("taken", "t@example.com", "Taken")
        env.emulator.seed_user("mover", "m@example.com", "Mover")
        with pytest.raises(TargetConflictError):
            env.target.update_user("mover", {"username": "TAKEN"})
        assert env.emulator.user("mover") is not None


def test_usernames_are_stored_in_lower_case() -> None:
    with environment() as env:
        env.target.create_user("Mixed.Case", "mc@example.com", "Mixed Case")
        env.target.create_group("Mixed Group")
        assert env.emulator.usernames.count("mixed.case") == 1
        assert "mixed group" in env.emulator.group_names
        users = env.make_target().read_users(["MIXED.case"])
        assert list(users["username"]) == ["mixed.case"]


def test_personal_access_token_works() -> None:
    with environment() as env:
        with env.make_target(credentials="token") as by_token:
            assert by_token.check().ok
            key = by_token.create_user("via.pat", "pat@example.com", "Via PAT")
        assert env.emulator.user("via.pat").key == key  # type: ignore[union-attr]
        assert {r.auth for r in env.emulator.app.writes()} == {"bearer"}


def test_adding_an_existing_member_is_a_400_counted_as_done() -> None:
    with environment() as env:
        env.emulator.seed_user("dup", "dup@example.com", "Dup")
        env.emulator.seed_group("dups", members=["dup"])
        env.emulator.app.clear_log()

        env.target.add_member("dups", "DUP")

        assert [w.status for w in env.emulator.app.writes()] == [400]
        assert env.emulator.group_members("dups") == {"dup"}


def test_deactivating_twice_meets_jiras_nothing_to_change_400() -> None:
    with environment() as env:
        env.emulator.seed_user("idle", "idle@example.com", "Idle", active=False)
        env.emulator.app.clear_log()

        env.target.deactivate_user("idle")

        assert [w.status for w in env.emulator.app.writes()] == [400]
        assert env.emulator.user("idle").active is False  # type: ignore[union-attr]


def test_create_whose_answer_was_lost_finds_its_own_account_by_name_and_email() -> None:
    # After a 503 the client looks for the account before sending the POST again. Same
    # e-mail (any case) → it is ours; another e-mail → sent again, and a real conflict.
    with environment() as env:
        key = env.emulator.seed_user("retried", "retried@example.com", "Retried")
        env.emulator.app.faults.script.append("503")
        assert env.target.create_user("retried", "RETRIED@example.com", "Retried") == key

        env.emulator.seed_user("someone", "someone@example.com", "Someone")
        env.emulator.app.clear_log()
        env.emulator.app.faults.script.append("503")
        with pytest.raises(TargetConflictError):
            env.target.create_user("someone", "other@example.com", "Other")
        assert [w.status for w in env.emulator.app.writes()] == [503, 400]


def test_rate_limited_answer_carries_jiras_headers() -> None:
    with environment() as env:
        env.emulator.app.faults.retry_after_seconds = 4
        env.emulator.app.faults.script.append("429")

        answer = httpx.get(env.target.url + "/rest/api/2/myself", auth=ADMIN)

        assert answer.status_code == 429
        assert answer.headers["retry-after"] == "4"
        for header in ("Limit", "Remaining", "Interval-Seconds", "FillRate"):
            assert answer.headers[f"X-RateLimit-{header}"]
        assert answer.json()["errorMessages"]


def test_jira_error_bodies_and_status_codes() -> None:
    with environment() as env:
        base = env.target.url + "/rest/api/2"
        env.emulator.seed_user("exists", "e@example.com", "Exists")
        body = {"name": "EXISTS", "emailAddress": "x@example.com", "displayName": "X"}
        answer = httpx.post(f"{base}/user", json=body, auth=ADMIN)
        assert answer.status_code == 400
        assert answer.json() == {
            "errorMessages": [],
            "errors": {"username": "A user with that username already exists."},
        }
        created = httpx.post(
            f"{base}/user",
            json={"name": "fresh", "emailAddress": "f@example.com", "displayName": "F"},
            auth=ADMIN,
        )
        assert created.status_code == 201
        assert created.headers["Location"].endswith("/user?username=fresh")
        assert created.json()["key"] != "fresh"
        assert httpx.get(f"{base}/user", params={"username": "nope"}, auth=ADMIN).status_code == 404
        search = httpx.get(f"{base}/user/search", params={"username": "."}, auth=ADMIN).json()
        assert isinstance(search, list) and {u["name"] for u in search} >= {"exists", "fresh"}
        wrong = httpx.get(f"{base}/myself", auth=(ADMIN[0], "bad"))
        assert wrong.status_code == 401 and wrong.json()["errorMessages"]
        # The newest supported version by default.
        assert httpx.get(f"{base}/serverInfo").json()["versionNumbers"] == [11, 3, 8]


def test_check_names_the_reason() -> None:
    with environment() as env:
        assert "administrator" in env.target.check().detail
        with env.make_target(credentials="wrong") as wrong:
            assert "refused the credentials" in wrong.check().detail
        with env.make_target(credentials="user") as user:
            assert "not a Jira administrator" in user.check().detail
        no_context = JiraTarget(
            "jira", env.target.url.removesuffix(CONTEXT_PATH), username="admin", password="x"
        )
        assert "context path" in no_context.check().detail
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    from usersync.http import RetryPolicy

    gone = JiraTarget(
        "jira",
        f"http://127.0.0.1:{port}",
        token="t",
        retry=RetryPolicy(max_attempts=2, sleep=lambda _: None),
    )
    result = gone.check()
    assert not result.ok and "unreachable" in result.detail


def test_open_target_builds_a_jira_client_from_a_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    emulator = JiraEmulator(context_path="/jira", admin=("svc", "s3cret"))
    config = TargetConfig.model_validate(
        {
            "kind": "jira",
            "url": "https://placeholder.example.com/jira",
            "auth": {"kind": "basic", "username": "svc", "password": {"env": "JIRA_PW"}},
        }
    )
    with pytest.raises(ConfigError, match="JIRA_PW"):
        open_target("prod", config)
    monkeypatch.setenv("JIRA_PW", "s3cret")
    with serve(emulator.app) as url:
        live = config.model_copy(update={"url": url + "/jira"})
        with open_target("prod", live) as target:
            assert isinstance(target, JiraTarget)
            assert target.check().ok


def test_legacy_group_expand_lists_active_members_only() -> None:
    with environment() as env:
        for name in ("a1", "a2", "a3"):
            env.emulator.seed_user(name, f"{name}@example.com", name.upper())
        env.emulator.seed_user("gone", "gone@example.com", "Gone", active=False)
        env.emulator.seed_group("legacy", members=["a1", "a2", "a3", "gone"])
        base = env.target.url + "/rest/api/2"

        answer = httpx.get(
            f"{base}/group", params={"groupname": "LEGACY", "expand": "users[1:2]"}, auth=ADMIN
        ).json()

        assert answer["users"]["size"] == 3
        assert [u["name"] for u in answer["users"]["items"]] == ["a2", "a3"]
        assert (answer["users"]["start-index"], answer["users"]["end-index"]) == (1, 2)
        # The paged call the client uses does list the inactive member.
        _, members = env.target.read_groups(["legacy"])
        assert set(members["username"]) == {"a1", "a2", "a3", "gone"}


def test_a_group_bean_lists_its_members_only_when_expanded() -> None:
    with environment() as env:
        for name in ("b1", "b2"):
            env.emulator.seed_user(name, f"{name}@example.com", name.upper())
        env.emulator.seed_group("beans", members=["b1"])
        base = env.target.url + "/rest/api/2"

        added = httpx.post(
            f"{base}/group/user", params={"groupname": "beans"}, json={"name": "b2"}, auth=ADMIN
        )
        plain = httpx.get(f"{base}/group", params={"groupname": "beans"}, auth=ADMIN).json()
        expanded = httpx.get(
            f"{base}/group", params={"groupname": "beans", "expand": "users"}, auth=ADMIN
        ).json()

        assert added.status_code == 201
        for bean in (added.json(), plain):
            assert bean["users"]["size"] == 2 and bean["users"]["items"] == []
            assert bean["expand"] == "users"
        assert [u["name"] for u in expanded["users"]["items"]] == ["b1", "b2"]


def test_accounts_are_read_by_key_with_get_user_or_user_list() -> None:
    with environment(version="10.3.0") as env:
        keys = [
            env.emulator.seed_user(f"k{i}", f"k{i}@example.com", f"K {i}", active=i != 2)
            for i in range(5)
        ]
        env.emulator.rename_user("k1", "k1.renamed")
        env.emulator.app.clear_log()

        few = env.make_target(lookup_threshold=10).read_users_by_key([keys[1], "JIRAUSER999"])
        assert list(few["username"]) == ["k1.renamed"] and list(few["target_key"]) == [keys[1]]
        assert [r.query for r in env.emulator.app.requests] == [
            {"key": keys[1]},
            {"key": "JIRAUSER999"},
        ]

        env.emulator.app.clear_log()
        many = env.make_target(lookup_threshold=2).read_users_by_key([*keys, "JIRAUSER999"])
        assert dict(zip(many["target_key"], many["username"], strict=True)) == {
            keys[0]: "k0",
            keys[1]: "k1.renamed",
            keys[2]: "k2",
            keys[3]: "k3",
            keys[4]: "k4",
        }
        assert not many.set_index("username").loc["k2", "active"]
        assert "/user/list" in requested_paths(env.emulator)


def test_current_account_is_asked_of_jira_for_a_password_and_a_token() -> None:
    with environment() as env:
        assert env.target.current_account() == "admin"
        with env.make_target(credentials="token") as by_token:
            assert by_token.current_account() == "admin"
        with env.make_target(credentials="user") as plain:
            assert plain.current_account() == "jira-user"
        assert {r.path for r in env.emulator.app.requests} == {"/jira/rest/api/2/myself"}


@pytest.mark.parametrize(
    "name", ["a<b", "r&d", "x>y", "nul\x00name", "bidi\u202ename", "iso\u2066name", "n" * 256]
)
def test_names_jira_refuses_are_refused_by_the_client_and_by_the_emulator(name: str) -> None:
    with environment() as env:
        assert env.target.refused_name("user", name)
        with pytest.raises(TargetRejectedError, match="nothing was sent"):
            env.target.create_user(name, "x@example.com", "X")
        assert env.emulator.app.requests == []

        base = env.target.url + "/rest/api/2"
        body = {"name": name, "emailAddress": "x@example.com", "displayName": "X"}
        answer = httpx.post(f"{base}/user", json=body, auth=ADMIN)
        assert answer.status_code == 400
        assert set(answer.json()) == {"errorMessages", "errors"}
        assert answer.json()["errors"]["username"]


def test_group_names_with_ampersands_are_fine_but_control_characters_are_not() -> None:
    with environment() as env:
        assert env.target.refused_name("group", "r&d <core>") is None
        env.target.create_group("r&d <core>")
        assert "r&d <core>" in env.emulator.group_names

        assert env.target.refused_name("group", "tab\tgroup")
        base = env.target.url + "/rest/api/2"
        answer = httpx.post(f"{base}/group", json={"name": "tab\tgroup"}, auth=ADMIN)
        assert answer.status_code == 400 and answer.json()["errorMessages"]


def test_jira_trims_values_and_lower_cases_usernames_as_stored_form_says() -> None:
    with environment() as env:
        desired = pd.DataFrame(
            {
                "username": ["  Mixed.Case "],
                "email": [" Mixed@Example.COM  "],
                "display_name": ["  Mixed  Case "],
            }
        )
        key = env.target.create_user(*desired.iloc[0])

        stored = env.emulator.user_by_key(key)
        assert stored is not None
        assert (stored.name, stored.email, stored.display_name) == (
            "mixed.case",
            "Mixed@Example.COM",
            "Mixed  Case",
        )
        expected = env.target.stored_form(desired).iloc[0]
        assert (stored.name, stored.email, stored.display_name) == tuple(expected)


def test_create_whose_answer_is_lost_is_not_posted_twice() -> None:
    with environment() as env:
        env.emulator.app.faults.script.append("applied-500")

        key = env.target.create_user("lost.answer", "lost@example.com", "Lost Answer")

        assert env.emulator.user("lost.answer").key == key  # type: ignore[union-attr]
        posts = [(w.status, w.applied_status) for w in env.emulator.app.writes()]
        assert posts == [(500, 201)]


# -- administrators -------------------------------------------------------------------------


def test_admin_rights_come_from_groups_granted_the_admin_global_permissions() -> None:
    with environment() as env:
        emulator = env.emulator
        with env.make_target(credentials="user") as plain:
            assert not plain.check().ok

            emulator.grant_admin(NON_ADMIN[0])  # into jira-administrators
            assert plain.check().ok
            env.target.remove_member("jira-administrators", NON_ADMIN[0])
            assert not plain.check().ok

            emulator.seed_admin_group("ops-root", members=[NON_ADMIN[0]])  # SYSTEM_ADMIN
            assert plain.check().ok
            assert emulator.is_admin(NON_ADMIN[0])


def test_administrators_are_the_members_of_the_admin_groups_it_is_told_of() -> None:
    with environment() as env:
        env.emulator.seed_user("sam.sys", "sam@example.com", "Sam Sys")
        env.emulator.seed_user("olga.ops", "olga@example.com", "Olga Ops")
        env.emulator.seed_admin_group("jira-system-administrators", members=["sam.sys"])
        env.emulator.seed_admin_group("ops-root", members=["olga.ops"], permission="ADMINISTER")
        env.emulator.app.clear_log()

        # Jira cannot say which groups hold the admin global permissions: a site granting them
        # to a group of its own must name it, or its members are not known as administrators.
        assert env.emulator.is_admin("olga.ops")
        assert env.target.administrators() == {"admin", "sam.sys"}
        told = env.make_target(admin_groups=["jira-administrators", "ops-root"])
        assert told.administrators() == {"admin", "olga.ops"}

        assert requested_paths(env.emulator) == {"/group/member"}
        assert not env.emulator.app.writes()


def test_no_admin_group_on_the_site_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    with environment() as env, caplog.at_level(logging.WARNING, "usersync.targets.jira"):
        assert env.make_target(admin_groups=["site-admins"]).administrators() == set()

        assert "none of the administrator groups (site-admins) exists" in caplog.text


def test_a_profiles_own_administrator_groups_are_read_besides_the_shipped_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    emulator = JiraEmulator(context_path="/jira", admin=("svc", "s3cret"))
    emulator.seed_user("root", "root@example.com", "Root")
    emulator.seed_user("dev", "dev@example.com", "Dev")
    emulator.seed_admin_group("it-admins", members=["root"])
    monkeypatch.setenv("JIRA_PW", "s3cret")
    with serve(emulator.app) as url:
        base = {
            "kind": "jira",
            "url": url + "/jira",
            "auth": {"kind": "basic", "username": "svc", "password": {"env": "JIRA_PW"}},
        }
        with open_target("prod", TargetConfig.model_validate(base)) as target:
            assert "root" not in target.administrators()  # a group Jira does not ship
        config = TargetConfig.model_validate({**base, "admin_groups": ["it-admins"]})
        with open_target("prod", config) as target:
            admins = target.administrators()
    assert {"root", "svc"} <= admins
    assert "dev" not in admins
