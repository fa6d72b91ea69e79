"""Confluence specifics the contract suite does not cover, against the emulator over real HTTP.

Lower-case usernames, names Confluence refuses (rejected before any request), the licence
limit (402), the silently capped page size, the JSON-RPC fallback of sites older than 8.2 (and
the mixed mode of 8.2/8.3), personal access tokens with JSON-RPC, Confluence's rate-limit
headers, configuration and `check`. No test sleeps: retry waits are recorded by the harness.
"""

from __future__ import annotations

import logging

import httpx
import pandas as pd
import pytest

from tests.targets.harness_confluence import ADMIN, ADMIN_TOKEN, environment
from usersync.config import TargetConfig
from usersync.errors import (
    ConfigError,
    TargetConflictError,
    TargetLicenceError,
    TargetRejectedError,
)
from usersync.targets import confluence
from usersync.targets.confluence import ConfluenceTarget


def test_mixed_case_username_is_created_in_lower_case() -> None:
    with environment() as env:
        key = env.target.create_user("Anna.Lee", "anna@example.com", "Anna Lee")

        sent = env.emulator.app.writes()[-1]
        assert sent.body["userName"] == "anna.lee"
        assert env.emulator.users["anna.lee"].user_key == key
        users = env.target.read_users(["ANNA.LEE"])
        assert list(users["username"]) == ["anna.lee"]


@pytest.mark.parametrize(
    ("username", "why"),
    [("john doe", "whitespace"), ("a+b", "+"), ("o'brien", "'"), ("anonymous", "reserved")],
)
def test_username_confluence_forbids_is_refused_before_any_request(username: str, why: str) -> None:
    with environment() as env:
        env.emulator.app.clear_log()

        with pytest.raises(TargetRejectedError) as caught:
            env.target.create_user(username, "x@example.com", "X")

        message = str(caught.value)
        assert f"'{username}'" in message and why in message and "attributes.csv" in message
        assert env.emulator.app.requests == []


def test_full_licence_is_a_clear_licence_error() -> None:
    with environment(license_limit=2) as env:  # admin + the harness's plain user
        with pytest.raises(TargetLicenceError) as caught:
            env.target.create_user("newcomer", "new@example.com", "New Comer")

        assert caught.value.status == 402
        assert "licence is full" in str(caught.value)
        assert "newcomer" not in env.emulator.users


def test_silently_capped_page_size_is_followed_through_links_next() -> None:
    with environment(page_size=10) as env:
        names = [f"m{i:02d}" for i in range(35)]
        for name in names:
            env.emulator.seed_user(name, f"{name}@example.com", name.upper())
        env.emulator.seed_group("crowd", members=names)
        env.emulator.app.clear_log()

        groups, memberships = env.target.read_groups(["crowd"])

        assert list(groups["group"]) == ["crowd"]
        assert sorted(memberships["username"]) == names
        pages = [r for r in env.emulator.app.requests if r.path.endswith("/group/crowd/member")]
        assert pages[0].query["limit"] == "200"  # asked for 200, the server answered 10
        assert [r.query["start"] for r in pages] == ["0", "10", "20", "30"]


def test_group_names_are_percent_encoded_in_paths() -> None:
    with environment() as env:
        env.emulator.seed_user("dev@example.com", "dev@example.com", "Dev")
        env.target.create_group("Team Blue + Green")
        env.target.add_member("Team Blue + Green", "dev@example.com")

        assert env.emulator.groups["team blue + green"].members == {"dev@example.com"}
        put = env.emulator.app.writes()[-1]
        assert put.method == "PUT" and put.path.endswith("/group/team blue + green")


def test_jsonrpc_fallback_before_8_2_does_the_full_cycle(caplog: pytest.LogCaptureFixture) -> None:
    with environment(version="7.19.0") as env:
        caplog.set_level(logging.INFO, logger="usersync.targets.confluence")
        emulator = env.emulator
        emulator.seed_user("old.timer", "old@example.com", "Old Timer")
        emulator.app.clear_log()
        target = env.make_target()

        key = target.create_user("Zoe.Quinn", "zoe@example.com", "Zoe Quinn")
        target.update_user("zoe.quinn", {"email": "zoe@new.example.com", "display_name": "Zoë Q"})
        target.create_group("Readers")
        target.add_member("readers", "zoe.quinn")
        target.add_member("readers", "old.timer")
        target.remove_member("readers", "old.timer")
        target.deactivate_user("zoe.quinn")

        zoe = emulator.users["zoe.quinn"]
        assert (zoe.user_key, zoe.email, zoe.display_name, zoe.active) == (
            key,
            "zoe@new.example.com",
            "Zoë Q",
            False,
        )
        assert emulator.groups["readers"].members == {"zoe.quinn"}
        users = target.read_users(["zoe.quinn"])
        assert users.loc[0, "email"] == "zoe@new.example.com"
        assert not users.loc[0, "active"]
        target.reactivate_user("zoe.quinn")
        assert emulator.users["zoe.quinn"].active
        writes = emulator.app.writes()
        assert writes and all("/rpc/json-rpc/confluenceservice-v2/" in w.path for w in writes)
        assert "version 7.19.0, using JSON-RPC" in caplog.text
        target.close()


def test_8_3_uses_rest_for_groups_and_jsonrpc_to_create_users() -> None:
    with environment(version="8.3.1") as env:
        env.emulator.app.clear_log()

        env.target.create_user("mixed", "mixed@example.com", "Mixed Mode")
        env.target.create_group("mixers")
        env.target.add_member("mixers", "mixed")

        paths = [w.path for w in env.emulator.app.writes()]
        assert paths[0].endswith("/rpc/json-rpc/confluenceservice-v2/addUser")
        assert paths[-2].endswith("/rest/api/admin/group")
        assert paths[-1].endswith("/rest/api/user/mixed/group/mixers")


def test_personal_access_token_cannot_use_jsonrpc() -> None:
    with environment(version="7.19.0") as env:
        env.emulator.app.clear_log()
        with env.make_target(credentials="token") as target, pytest.raises(ConfigError) as caught:
            target.create_user("someone", "someone@example.com", "Some One")

        message = str(caught.value)
        assert "personal access tokens" in message and "auth kind: basic" in message
        assert env.emulator.app.writes() == []
    with pytest.raises(ConfigError, match="personal access tokens"):
        ConfluenceTarget("wiki", "http://127.0.0.1:9", token="t", api="jsonrpc")


def test_personal_access_token_works_over_rest_without_emails() -> None:
    with environment() as env:
        env.emulator.seed_user("pat.user", "pat@example.com", "Pat User")
        env.emulator.app.clear_log()
        with env.make_target(credentials="token") as target:
            target.create_group("via-token")
            users = target.read_users(["pat.user"])

        assert "via-token" in env.emulator.groups
        assert users.loc[0, "display_name"] == "Pat User"
        # Confluence's REST user object has no e-mail and JSON-RPC refuses tokens.
        assert pd.isna(users.loc[0, "email"])
        assert {r.auth for r in env.emulator.app.requests} == {"bearer"}


def test_remote_api_off_is_said_once_with_the_switch_not_blamed_on_admin_rights(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with environment(remote_api_enabled=False) as env:
        env.emulator.seed_user("ann", "ann@example.com", "Ann")
        env.emulator.seed_user("bob", "bob@example.com", "Bob")
        with caplog.at_level(logging.WARNING, logger="usersync"):
            users = env.target.read_users(["ann", "bob"])

    assert users["email"].isna().all()  # unknown, never "empty"
    lines = [r.getMessage() for r in caplog.records if "e-mail addresses" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "HTTP 403" in lines[0] and "is disabled" in lines[0]  # what the server said
    assert "switch the Remote API on" in lines[0]  # and the fix
    assert "administrator rights" not in lines[0]
    assert lines[0].count("confluence '") == 1


def test_rate_limit_answer_carries_confluence_headers_and_is_retried() -> None:
    with environment() as env:
        env.emulator.seed_user("rita", "rita@example.com", "Rita")
        env.emulator.app.faults.retry_after_seconds = 5
        env.emulator.app.faults.script.extend(["429", "429"])
        base = env.target.url

        raw = httpx.get(f"{base}/rest/api/user", params={"username": "rita"}, auth=ADMIN)
        assert raw.status_code == 429
        assert raw.headers["retry-after"] == "5"
        for header in ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-FillRate"):
            assert header in raw.headers
        assert raw.json()["statusCode"] == 429

        env.target.deactivate_user("rita")

        assert env.waits == [5.0]
        assert not env.emulator.users["rita"].active


def test_read_users_lists_all_users_when_many_are_asked_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(confluence, "LIST_ALL_USERS_ABOVE", 40)
    with environment(page_size=10) as env:
        names = [f"bulk{i:04d}" for i in range(50)]
        for name in names:
            env.emulator.seed_user(name, f"{name}@example.com", name)
        env.emulator.app.clear_log()

        users = env.target.read_users(names)

        assert sorted(users["username"]) == names
        lookups = [r for r in env.emulator.app.requests if r.path.endswith("/rest/api/user")]
        listings = [r for r in env.emulator.app.requests if r.path.endswith("/rest/api/user/list")]
        assert lookups == [] and len(listings) == 6  # 52 users (with the harness's), 10 a page


def test_from_config_resolves_the_secret_and_serves_a_context_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with environment() as env:
        monkeypatch.setenv("WIKI_PASSWORD", ADMIN[1])
        config = TargetConfig.model_validate(
            {
                "kind": "confluence",
                "url": env.target.url + "/",
                "auth": {
                    "kind": "basic",
                    "username": ADMIN[0],
                    "password": {"env": "WIKI_PASSWORD"},
                },
                "confluence_api": "rest",
            }
        )
        with ConfluenceTarget.from_config("wiki", config) as target:
            result = target.check()

        assert result.ok and "/confluence" in result.detail and "REST" in result.detail
        with pytest.raises(ConfigError, match="WIKI_TOKEN"):
            token_config = {
                **config.model_dump(mode="json"),
                "auth": {"kind": "token", "token": {"env": "WIKI_TOKEN"}},
            }
            ConfluenceTarget.from_config("wiki", TargetConfig.model_validate(token_config))


def test_check_names_the_reason() -> None:
    with environment(version="7.19.0") as env:
        assert "JSON-RPC" in env.target.check().detail
        with env.make_target(credentials="wrong") as wrong:
            assert "credentials refused" in wrong.check().detail
        with env.make_target(credentials="user") as user:
            detail = user.check().detail
            assert "'plain.user' is not in confluence-administrators" in detail
    unreachable = ConfluenceTarget(
        "wiki", "http://127.0.0.1:9/confluence", token=ADMIN_TOKEN, api="rest"
    )
    unreachable._client.retry = unreachable._client.retry.__class__(max_attempts=1)
    result = unreachable.check()
    assert not result.ok and "not reachable" in result.detail


# -- accounts by key, the account usersync runs as ----------------------------------------


@pytest.mark.parametrize("listing", [False, True], ids=["lookups", "user-list"])
def test_read_users_by_key_finds_an_account_renamed_by_hand(
    listing: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if listing:
        monkeypatch.setattr(confluence, "LIST_ALL_USERS_ABOVE", 1)
    with environment() as env:
        env.emulator.seed_user("old.name", "old@example.com", "Old Name")
        env.emulator.seed_user("other", "other@example.com", "Other")
        key = env.emulator.users["old.name"].user_key
        env.emulator.rename_user("old.name", "New.Name")
        env.emulator.users["new.name"].display_name = "New Name"

        users = env.target.read_users_by_key([key, "no-such-key"])

        assert users.to_dict("records") == [
            {
                "target_key": key,
                "username": "new.name",
                "email": "old@example.com",
                "display_name": "New Name",
                "active": True,
            }
        ]
        assert env.target.read_users(["old.name"]).empty
        state = env.target.read_state(["old.name", "other"], [], keys=[key])
        assert sorted(state.users["username"]) == ["new.name", "other"]


def test_current_account_is_asked_of_confluence_with_password_or_token() -> None:
    with environment() as env:
        assert env.target.current_account() == ADMIN[0]
        with env.make_target(credentials="user") as user:
            assert user.current_account() == "plain.user"
        env.emulator.app.clear_log()
        with env.make_target(credentials="token") as token:
            assert token.current_account() == ADMIN[0]
        [asked] = env.emulator.app.requests
        assert asked.path.endswith("/rest/api/user/current") and asked.auth == "bearer"


# -- e-mails: REST where it tells them, else JSON-RPC, else unknown ------------------------


def rpc_calls(env: object) -> list:
    return [r for r in env.emulator.app.requests if "/rpc/json-rpc/" in r.path]  # type: ignore[attr-defined]


@pytest.mark.parametrize("credentials", ["admin", "token"])
@pytest.mark.parametrize("listing", [False, True], ids=["lookups", "user-list"])
def test_emails_come_with_the_rest_user_objects_where_confluence_offers_them(
    credentials: str, listing: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if listing:
        monkeypatch.setattr(confluence, "LIST_ALL_USERS_ABOVE", 2)
    with environment(rest_email=True, remote_api_enabled=False) as env:
        names = ["ann", "ben", "cid"]
        for name in names:
            env.emulator.seed_user(name, f"{name.upper()}@Example.com", name.title())
        env.emulator.app.clear_log()
        with env.make_target(credentials=credentials) as target:
            users = target.read_users(names)

        assert dict(zip(users["username"], users["email"], strict=True)) == {
            name: f"{name.upper()}@Example.com" for name in names
        }
        assert rpc_calls(env) == []
        # One call per user looked up, or only the list pages: no extra call per e-mail.
        calls = [r for r in env.emulator.app.requests if "/rest/api/user" in r.path]
        assert len(calls) == len(env.emulator.app.requests) - int(listing)  # + version probe
        assert len(calls) == (1 if listing else len(names))
        assert all("details.personal" in r.query["expand"] for r in calls)


@pytest.mark.parametrize("credentials", ["admin", "token"])
def test_emails_nobody_tells_are_unknown_never_empty(credentials: str) -> None:
    # The emulator's defaults: no e-mail in REST user objects, Remote API off.
    with environment(remote_api_enabled=False) as env:
        for name in ("ann", "ben", "cid"):
            env.emulator.seed_user(name, f"{name}@example.com", name.title())
        env.emulator.app.clear_log()
        with env.make_target(credentials=credentials) as target:
            users = target.read_users(["ann", "ben", "cid"])
            again = target.read_users(["ann"])

        # NA (unknown), not "": the planner never compares an unknown e-mail.
        assert len(users) == 3 and users["email"].isna().all() and again["email"].isna().all()
        # JSON-RPC is asked once (basic auth only), and not again after its refusal.
        assert len(rpc_calls(env)) == (1 if credentials == "admin" else 0)


def test_emails_through_jsonrpc_when_rest_has_none_and_the_remote_api_is_on() -> None:
    with environment(remote_api_enabled=True) as env:
        env.emulator.seed_user("ann", "ann@example.com", "Ann")
        env.emulator.app.clear_log()

        users = env.target.read_users(["ann", "ghost"])

        assert list(users["email"]) == ["ann@example.com"]
        [call] = rpc_calls(env)
        assert call.path.endswith("/getUser") and call.body == ["ann"]


# -- updates carry e-mail and full name together -------------------------------------------


def test_update_sends_email_and_full_name_together() -> None:
    with environment() as env:
        env.emulator.seed_user("erin", "erin@old.example.com", "Erin Old")
        put = f"{env.target.url}/rest/api/admin/user/erin"
        half = httpx.put(put, json={"fullName": "Erin Half"}, auth=ADMIN)
        assert half.status_code == 400  # the stricter reading: both fields or nothing
        assert env.emulator.users["erin"].display_name == "Erin Old"
        env.emulator.app.clear_log()

        env.target.update_user(
            "erin",
            {"display_name": "Erin New"},
            {"username": "erin", "email": "erin@idp.example.com", "display_name": "Erin New"},
        )

        [sent] = env.emulator.app.writes()
        assert sent.body == {"email": "erin@idp.example.com", "fullName": "Erin New"}
        erin = env.emulator.users["erin"]
        assert (erin.email, erin.display_name) == ("erin@idp.example.com", "Erin New")


def test_update_without_desired_values_sends_what_confluence_holds() -> None:
    with environment(rest_email=True, remote_api_enabled=False) as env:
        env.emulator.seed_user("erin", "erin@example.com", "Erin Old")
        env.emulator.app.clear_log()

        env.target.update_user("erin", {"display_name": "Erin New"})

        [sent] = env.emulator.app.writes()
        assert sent.body == {"email": "erin@example.com", "fullName": "Erin New"}


def test_update_refused_before_sending_when_the_email_to_keep_is_unknown() -> None:
    with environment(remote_api_enabled=False) as env:
        env.emulator.seed_user("erin", "erin@example.com", "Erin Old")
        env.emulator.app.clear_log()

        with pytest.raises(TargetRejectedError, match="e-mail and the full name together"):
            env.target.update_user("erin", {"display_name": "Erin New"})

        # Only the JSON-RPC getUser it tried (a read sent as POST), no update.
        assert [w.path.rsplit("/", 1)[-1] for w in env.emulator.app.writes()] == ["getUser"]
        assert env.emulator.users["erin"].display_name == "Erin Old"


# -- creates whose answer was lost happen once --------------------------------------------


@pytest.mark.parametrize("fault", ["applied-drop", "applied-500"])
@pytest.mark.parametrize("version", ["8.9.0", "7.19.0"], ids=["rest", "jsonrpc"])
def test_create_user_whose_answer_was_lost_is_read_back_not_repeated(
    fault: str, version: str
) -> None:
    with environment(version=version) as env:
        env.emulator.app.faults.only_methods = ("POST",)
        env.emulator.app.faults.script.append(fault)
        env.emulator.app.clear_log()

        key = env.target.create_user("Nina", "Nina@Example.com", "Nina Lost")

        assert env.emulator.users["nina"].user_key == key
        creates = [
            r for r in env.emulator.app.writes() if r.path.endswith(("/admin/user", "/addUser"))
        ]
        assert len(creates) == 1 and creates[0].applied_status in (200, 201)
        assert 409 not in [r.status for r in env.emulator.app.requests]


@pytest.mark.parametrize("fault", ["applied-drop", "applied-500"])
@pytest.mark.parametrize("name", ["lost-answers", "lost/answers"])
def test_create_group_whose_answer_was_lost_is_read_back_not_repeated(
    fault: str, name: str
) -> None:
    with environment() as env:
        env.emulator.app.faults.only_methods = ("POST",)
        env.emulator.app.faults.script.append(fault)
        env.emulator.app.clear_log()

        env.target.create_group(name)

        assert name in env.emulator.groups
        assert len(env.emulator.app.writes()) == 1


def test_lost_create_that_did_not_happen_is_sent_again() -> None:
    with environment() as env:
        env.emulator.app.faults.only_methods = ("POST",)
        env.emulator.app.faults.script.append("500")  # refused before the product saw it
        env.emulator.app.clear_log()

        key = env.target.create_user("omar", "omar@example.com", "Omar")

        assert env.emulator.users["omar"].user_key == key
        assert [r.status for r in env.emulator.app.writes()] == [500, 201]
        assert len(env.waits) == 1


def test_lost_create_then_someone_elses_account_is_a_conflict() -> None:
    with environment() as env:
        env.emulator.seed_user("pia", "pia@elsewhere.example.com", "Another Pia")
        env.emulator.app.faults.only_methods = ("POST",)
        env.emulator.app.faults.script.append("drop")  # lost before the product saw it
        env.emulator.app.clear_log()

        with pytest.raises(TargetConflictError):
            env.target.create_user("pia", "pia@example.com", "Pia")

        assert env.emulator.users["pia"].email == "pia@elsewhere.example.com"


# -- group names a URL path cannot carry ---------------------------------------------------


def test_group_names_with_slashes_and_other_url_characters_round_trip() -> None:
    groups = ["team/a", "back\\slash", "100% sure", "what?", "#hash"]
    with environment() as env:
        for name in ("ana", "ben"):
            env.emulator.seed_user(name, f"{name}@example.com", name.title())
        with env.make_target() as first_run:
            found, _ = first_run.read_groups(groups)
            assert found.empty
            for group in groups:
                first_run.create_group(group)
                first_run.add_member(group, "ana")
                first_run.add_member(group, "ben")
                first_run.remove_member(group, "ana")
        env.emulator.app.clear_log()

        with env.make_target() as second_run:
            found, memberships = second_run.read_groups([g.upper() for g in groups])

        assert sorted(found["group"]) == sorted(groups)
        assert set(zip(memberships["group"], memberships["username"], strict=True)) == {
            (g, "ben") for g in groups
        }
        assert {g: env.emulator.groups[g].members for g in groups} == {g: {"ben"} for g in groups}
        assert env.emulator.app.writes() == []  # nothing created again
        assert all(r.status == 200 for r in env.emulator.app.requests)


def test_an_encoded_slash_in_a_path_is_refused_as_tomcat_does() -> None:
    with environment() as env:
        env.emulator.seed_group("team/a")
        refused = httpx.get(f"{env.target.url}/rest/api/group/team%2Fa/member", auth=ADMIN)
        assert refused.status_code == 404
        query = httpx.get(
            f"{env.target.url}/rest/api/group/member", params={"groupName": "team/a"}, auth=ADMIN
        )
        assert query.status_code == 200 and query.json()["results"] == []


def test_slash_group_membership_without_jsonrpc_fails_for_that_group_only() -> None:
    with environment(remote_api_enabled=False) as env:
        env.emulator.seed_user("ana", "ana@example.com", "Ana")
        env.emulator.seed_group("team/a")
        env.emulator.seed_group("team-b")

        with pytest.raises(TargetRejectedError) as caught:
            env.target.add_member("team/a", "ana")
        env.target.add_member("team-b", "ana")

        assert "'team/a'" in str(caught.value) and "Remote API" in str(caught.value)
        assert env.emulator.groups_of("ana") == {"team-b"}
        found, _ = env.target.read_groups(["team/a"])
        assert list(found["group"]) == ["team/a"]


def test_slash_group_on_a_site_without_the_query_form_is_a_clear_error() -> None:
    with environment(version="7.19.0") as env:
        env.emulator.seed_group("team/a")
        env.emulator.seed_group("member")  # what `/group/member` means on this version

        found, _ = env.target.read_groups(["absent/group"])
        assert found.empty
        with pytest.raises(TargetRejectedError, match="no query-parameter form"):
            env.target.read_groups(["team/a"])


# -- names Confluence refuses, values as Confluence stores them ----------------------------


def test_refused_names() -> None:
    with environment() as env:
        target = env.target
        assert target.refused_name("user", "Anna.Lee") is None  # stored lower case
        for name, why in [("john doe", "whitespace"), ("a+b", "+"), ("anonymous", "reserved")]:
            reason = target.refused_name("user", name)
            assert reason and why in reason and "Confluence" in reason
        assert "empty" in (target.refused_name("user", " ") or "")
        assert "control" in (target.refused_name("user", "ann\x85") or "")
        assert target.refused_name("group", "team/a") is None
        assert "control" in (target.refused_name("group", "team\x00") or "")


def test_stored_form_matches_what_confluence_stores() -> None:
    with environment() as env:
        desired = pd.DataFrame(
            {
                "username": [" Anna.Lee "],
                "email": [" anna@example.com "],
                "display_name": ["Anna Lee  "],
            },
            dtype="string",
        )
        row = desired.iloc[0]
        env.target.create_user(row["username"], row["email"], row["display_name"])
        env.target.update_user(
            "anna.lee", {"display_name": " Anna M. Lee "}, {"email": row["email"]}
        )

        stored = env.target.stored_form(desired.assign(display_name=[" Anna M. Lee "]))
        read = env.target.read_users(["anna.lee"])
        columns = ["username", "email", "display_name"]
        assert read[columns].to_dict("records") == stored[columns].to_dict("records")


# -- administrators ------------------------------------------------------------------------


def test_administrators_hold_an_admin_global_permission_or_sit_in_the_super_group() -> None:
    with environment() as env:
        emulator = env.emulator
        for name in ("sys.direct", "sys.grouped", "conf.grouped", "super", "writer"):
            emulator.seed_user(name, f"{name}@example.com", name.title())
        emulator.grant_admin("sys.direct", target_type="system")
        emulator.seed_admin_group("sysadmins", members=["sys.grouped"], target_type="system")
        emulator.seed_admin_group("wiki-admins", members=["conf.grouped"])
        emulator.seed_group("confluence-administrators", members=["super"])
        emulator.seed_group("confluence-users", members=["writer"])  # can use, create spaces
        emulator.app.clear_log()

        admins = env.target.administrators()

        assert admins == {"admin", "sys.direct", "sys.grouped", "conf.grouped", "super"}
        assert admins == {u.username for u in emulator.users.values() if emulator.is_admin(u)}
        assert not emulator.app.writes()
        assert sum(r.path.endswith("/rest/api/permissions") for r in emulator.app.requests) == 1


def test_before_9_2_only_the_admin_groups_are_known_and_a_warning_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with (
        environment(version="8.9.0") as env,
        caplog.at_level(logging.WARNING, "usersync.targets.confluence"),
    ):
        env.emulator.seed_user("direct", "direct@example.com", "Direct")
        env.emulator.seed_user("super", "super@example.com", "Super")
        env.emulator.grant_admin("direct")
        env.emulator.seed_group("confluence-administrators", members=["super"])

        assert env.target.administrators() == {"admin", "super"}
        env.emulator.seed_group("wiki-admins", members=["direct"])
        with ConfluenceTarget(
            "wiki",
            env.target.url,
            auth=httpx.BasicAuth(*ADMIN),
            admin_groups=["confluence-administrators", "wiki-admins"],
        ) as told:
            assert told.administrators() == {"admin", "super", "direct"}

        assert "the global permissions cannot be read" in caplog.text
        assert "not protected" in caplog.text


def grants_answered(grants: list[dict]) -> ConfluenceTarget:
    """A client whose site answers `GET /rest/api/permissions` with `grants` and knows the
    users `ann` (key k-ann) and no groups."""

    def answer(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.endswith("/rest/api/permissions"):
            return httpx.Response(200, json=grants)
        if path.endswith("/rest/api/user") and request.url.params.get("key") == "k-ann":
            return httpx.Response(
                200, json={"type": "known", "username": "ann", "userKey": "k-ann"}
            )
        if path.endswith("/rest/api/group"):
            page = {"results": [], "start": 0, "limit": 200, "size": 0, "_links": {}}
            return httpx.Response(200, json=page)
        return httpx.Response(404, json={"statusCode": 404, "message": "not found"})

    return ConfluenceTarget(
        "wiki",
        "https://wiki.example.com",
        auth=httpx.BasicAuth("admin", "x"),
        api="rest",
        transport=httpx.MockTransport(answer),
    )


def grant(subject: dict, target_type: str = "application", key: str = "administer") -> dict:
    return {"operation": {"targetType": target_type, "operationKey": key}, "subject": subject}


def test_grant_subjects_are_read_by_username_or_by_key() -> None:
    target = grants_answered(
        [
            grant({"type": "known", "username": "Bob", "userKey": "k-bob"}),
            grant({"type": "user", "userKey": "k-ann", "displayName": "Ann"}, "system"),
            grant({"type": "user", "userKey": "k-gone", "displayName": "Deleted"}),
            grant({"type": "user", "username": "carl"}, "application", "use"),
            grant({"type": "anonymous"}, "application", "use"),
        ]
    )

    assert target.administrators() == {"bob", "ann"}


@pytest.mark.parametrize(
    "subject",
    [{"type": "user", "displayName": "Ann Admin"}, {"type": "role", "name": "x"}, {}],
    ids=["user-without-name-or-key", "unknown-type", "empty"],
)
def test_an_admin_grant_whose_subject_cannot_be_told_is_an_error(subject: dict) -> None:
    target = grants_answered([grant(subject, "system")])

    with pytest.raises(TargetRejectedError, match="refuses to guess"):
        target.administrators()


def test_unknown_paths_answer_confluences_json_error() -> None:
    with environment() as env:
        for path in ("/rest/api/nothing", "/x"):
            answer = httpx.get(env.target.url + path, auth=ADMIN)
            assert answer.status_code == 404
            body = answer.json()
            assert body["statusCode"] == 404 and body["message"]
        answer = httpx.delete(env.target.url + "/rest/api/user/current", auth=ADMIN)
        assert answer.status_code == 405 and answer.json()["statusCode"] == 405
