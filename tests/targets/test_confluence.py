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
from usersync.errors import ConfigError, TargetLicenceError, TargetRejectedError
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
