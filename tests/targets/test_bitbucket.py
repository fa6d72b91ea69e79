"""Bitbucket specifics the product-neutral contract suite cannot express, over real HTTP.

Licence as the stand-in for deactivation (checked through the permissions REST API, as an
admin would), slugs that differ from usernames, the refusal of personal access tokens by the
admin endpoints, create-user as query parameters answering 204, paging across capped pages,
and a 429 whose Retry-After is honoured without sleeping.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

import httpx
import pandas as pd
import pytest
from usersync_sandbox.bitbucket import DEFAULT_GROUP, BitbucketEmulator
from usersync_sandbox.server import serve

from tests.targets import harness_bitbucket as harness
from tests.targets.conftest import TargetEnv
from usersync.config import TargetConfig
from usersync.errors import (
    ConfigError,
    TargetConflictError,
    TargetPermissionError,
    TargetRejectedError,
)
from usersync.http import ApiClient, RetryPolicy
from usersync.targets.bitbucket import BitbucketTarget

API = f"{harness.CONTEXT_PATH}/rest/api/1.0"


@pytest.fixture
def env() -> Iterator[TargetEnv]:
    with harness.environment() as env:
        yield env


def admin_api(env: TargetEnv) -> httpx.Client:
    """A plain HTTP client as the admin, for checking what Bitbucket reports."""
    base = env.target.client.base_url
    return httpx.Client(base_url=base, auth=httpx.BasicAuth(*harness.ADMIN), timeout=10)


def direct_permission(env: TargetEnv, username: str) -> str | None:
    with admin_api(env) as api:
        page = api.get("/admin/permissions/users", params={"filter": username}).json()
    return next((r["permission"] for r in page["values"] if r["user"]["name"] == username), None)


def active(env: TargetEnv, username: str) -> bool:
    users = env.target.read_users([username])
    assert len(users) == 1, f"{username} not found"
    return bool(users.loc[0, "active"])


# -- licence instead of deactivate --------------------------------------------------------


def test_deactivate_revokes_licence_and_reactivate_grants_it_back(env: TargetEnv) -> None:
    env.emulator.seed_user("alice", "alice@example.com", "Alice")
    assert direct_permission(env, "alice") == "LICENSED_USER"

    env.target.deactivate_user("alice")
    assert direct_permission(env, "alice") is None
    assert not active(env, "alice")
    # Bitbucket's own `active` flag is the directory's and does not move.
    with admin_api(env) as api:
        user = api.get("/admin/users", params={"filter": "alice"}).json()["values"][0]
    assert user["active"] is True

    env.target.deactivate_user("alice")  # idempotent
    env.target.reactivate_user("alice")
    assert direct_permission(env, "alice") == "LICENSED_USER"
    assert active(env, "alice")


def test_reactivate_never_demotes_an_account_holding_more(env: TargetEnv) -> None:
    env.emulator.seed_user("root2", "root2@example.com", "Second Admin", permission="ADMIN")
    env.emulator.app.clear_log()
    env.target.reactivate_user("root2")
    assert direct_permission(env, "root2") == "ADMIN"
    assert env.emulator.app.writes() == []


def test_licence_through_a_group_reads_active_and_blocks_deactivation(env: TargetEnv) -> None:
    env.emulator.seed_user("bob", "bob@example.com", "Bob", active=False, groups=[DEFAULT_GROUP])
    assert direct_permission(env, "bob") is None
    assert active(env, "bob")
    with pytest.raises(TargetRejectedError, match=f"licensed through group.*{DEFAULT_GROUP}"):
        env.target.deactivate_user("bob")
    assert active(env, "bob")


def test_unlicensed_seed_reads_inactive(env: TargetEnv) -> None:
    env.emulator.seed_user("carol", "carol@example.com", "Carol", active=False)
    assert not active(env, "carol")


# -- create-user, slugs -------------------------------------------------------------------


def test_create_user_sends_query_parameters_and_gets_204(env: TargetEnv) -> None:
    env.emulator.app.clear_log()
    key = env.target.create_user("dave", "dave@example.com", "Dave")

    create = next(r for r in env.emulator.app.writes() if r.method == "POST")
    assert create.path == f"{API}/admin/users"
    assert create.body is None and create.status == 204
    assert create.query["name"] == "dave"
    assert create.query["emailAddress"] == "dave@example.com"
    assert create.query["displayName"] == "Dave"
    assert create.query["addToDefaultGroup"] == "false"
    assert len(create.query["password"]) >= 32
    # licensed directly, not through the default group, so deactivate can take it away
    assert direct_permission(env, "dave") == "LICENSED_USER"
    assert "dave" not in env.emulator.members(DEFAULT_GROUP)
    assert key == str(env.emulator.users["dave"].id)
    with pytest.raises(TargetConflictError):
        env.target.create_user("DAVE", "other@example.com", "Other Dave")


def test_slug_differs_from_an_email_style_username(env: TargetEnv) -> None:
    username = "jane.doe@corp.example"
    env.target.create_user(username, username, "Jane Doe")
    with admin_api(env) as api:
        assert api.get(f"/users/{username}").status_code == 404
        by_slug = api.get("/users/jane.doe_corp.example")
    assert by_slug.status_code == 200
    assert by_slug.json()["name"] == username
    assert by_slug.json()["slug"] != username

    users = env.target.read_users([username.upper()])
    assert list(users["username"]) == [username]
    env.target.update_user(username, {"display_name": "Jane Q. Doe"})
    env.target.deactivate_user(username)
    assert not active(env, username)


def test_rename_then_update_under_the_new_name(env: TargetEnv) -> None:
    env.emulator.seed_user("erin", "erin@old.example", "Erin")
    env.target.update_user("erin", {"username": "erin.k", "email": "erin@new.example"})
    users = env.target.read_users(["erin", "erin.k"])
    assert users.to_dict("records") == [
        {
            "target_key": str(env.emulator.users["erin.k"].id),
            "username": "erin.k",
            "email": "erin@new.example",
            "display_name": "Erin",
            "active": True,
        }
    ]


# -- personal access tokens and permissions -----------------------------------------------


def test_pat_fails_fast_with_zero_requests(env: TargetEnv) -> None:
    target = env.make_target(credentials="token")
    env.emulator.app.clear_log()
    with pytest.raises(ConfigError, match=r"personal access tokens.*basic"):
        target.create_user("frank", "frank@example.com", "Frank")
    with pytest.raises(ConfigError, match="personal access tokens"):
        target.read_users(["admin"])
    assert env.emulator.app.requests == []
    result = target.check()
    assert not result.ok and "personal access tokens" in result.detail
    assert env.emulator.app.writes() == []


def test_emulator_refuses_pats_on_admin_endpoints(env: TargetEnv) -> None:
    token = env.emulator.add_token("admin")
    with httpx.Client(base_url=env.target.client.base_url, timeout=10) as api:
        bearer = {"Authorization": f"Bearer {token}"}
        assert api.get("/admin/users", headers=bearer).status_code == 200  # LICENSED_USER level
        refused = api.post("/admin/groups", params={"name": "g"}, headers=bearer)
    assert refused.status_code == 401
    assert refused.json()["errors"][0]["message"].startswith("Tokens may not have")
    assert "g" not in env.emulator.groups


def test_pat_as_basic_password_is_explained_and_writes_nothing(env: TargetEnv) -> None:
    target = env.make_target(credentials="token-as-password")
    with pytest.raises(TargetPermissionError, match="personal access tokens"):
        target.create_group("ops")
    assert all(r.status >= 400 for r in env.emulator.app.writes())
    assert "ops" not in env.emulator.groups


def test_non_admin_gets_a_permission_error_not_a_credentials_error(env: TargetEnv) -> None:
    target = env.make_target(credentials="user")
    with pytest.raises(TargetPermissionError, match="lacks the ADMIN global permission"):
        target.create_group("ops")


@pytest.mark.parametrize(
    ("credentials", "ok", "phrase"),
    [
        ("admin", True, "holds SYS_ADMIN"),
        ("wrong", False, "credentials"),
        ("user", False, "lacks the ADMIN"),
        ("token", False, "personal access tokens"),
    ],
)
def test_check_gives_a_precise_reason(
    env: TargetEnv, credentials: str, ok: bool, phrase: str
) -> None:
    result = env.make_target(credentials=credentials).check()
    assert (result.ok, phrase in result.detail) == (ok, True), result.detail


def test_check_reports_an_unreachable_instance() -> None:
    config = TargetConfig.model_validate(
        {
            "kind": "bitbucket",
            "url": "http://127.0.0.1:9",  # discard port: nothing listens
            "auth": {"kind": "basic", "username": "admin", "password": {"prefect_secret": "p"}},
        }
    )
    target = BitbucketTarget.from_config(
        "bb",
        config,
        load_prefect_secret=lambda _name: "secret",
        retry=RetryPolicy(max_attempts=1, sleep=lambda _s: None),
    )
    with target:
        result = target.check()
    assert not result.ok and "not reachable" in result.detail


# -- paging, memberships, rate limits -----------------------------------------------------


def test_paging_follows_next_page_start(env: TargetEnv) -> None:
    names = [f"user{i:02d}" for i in range(30)]  # more than the filtered-lookup threshold
    for name in names:
        env.emulator.seed_user(name, f"{name}@example.com", name.title())
    env.emulator.seed_group("devs", members=names[:12])
    env.emulator.app.clear_log()

    users = env.target.read_users(names)
    _, members = env.target.read_groups(["devs"])

    assert sorted(users["username"]) == names
    assert users["active"].all()
    assert sorted(members["username"]) == names[:12]
    member_starts = [
        r.query["start"]
        for r in env.emulator.app.requests
        if r.path.endswith("/admin/groups/more-members")
    ]
    assert member_starts == ["0", "5", "10"]
    assert all(r.query.get("limit") == "1000" for r in env.emulator.app.requests)


def test_emulator_page_envelope_defaults_and_latest_alias() -> None:
    emulator = BitbucketEmulator(admin=harness.ADMIN)  # default cap, no context path
    for i in range(30):
        emulator.seed_user(f"p{i:02d}", f"p{i}@example.com", f"P {i}")
    with (
        serve(emulator.app) as url,
        httpx.Client(base_url=url, auth=httpx.BasicAuth(*harness.ADMIN), timeout=10) as api,
    ):
        page = api.get("/rest/api/latest/admin/users").json()
        assert (page["size"], page["limit"], page["start"]) == (25, 25, 0)
        assert page["isLastPage"] is False and page["nextPageStart"] == 25
        last = api.get("/rest/api/1.0/admin/users", params={"start": 25}).json()
        assert last["isLastPage"] is True and "nextPageStart" not in last
        missing = api.post("/rest/api/1.0/admin/users", params={"name": "x"})
        assert missing.status_code == 400
        assert set(missing.json()["errors"][0]) == {"context", "message", "exceptionName"}
        no_password = api.post(
            "/rest/api/1.0/admin/users",
            params={"name": "x", "displayName": "X", "emailAddress": "x@example.com"},
        )
        assert no_password.status_code == 400
        notified = api.post(
            "/rest/api/1.0/admin/users",
            params={"name": "x", "displayName": "X", "emailAddress": "x@e.com", "notify": "true"},
        )
        assert notified.status_code == 204 and notified.content == b""


def test_memberships_are_idempotent() -> None:
    # The emulator answers 404 for removing a non-member, the stricter of the two possibilities.
    with harness.environment(remove_nonmember_status=404) as env:
        env.emulator.seed_user("gina", "gina@example.com", "Gina")
        env.target.create_group("ops")
        env.target.add_member("ops", "gina")
        env.target.add_member("OPS", "gina")
        assert env.emulator.members("ops") == ["gina"]
        env.target.remove_member("ops", "gina")
        env.target.remove_member("ops", "gina")
        assert env.emulator.members("ops") == []


def test_429_retry_after_is_honoured_without_sleeping(env: TargetEnv) -> None:
    env.emulator.app.faults.retry_after_seconds = 7
    env.emulator.app.faults.script = deque(["429"])
    env.target.create_group("ops")
    assert env.waits == [7.0]
    statuses = [r.status for r in env.emulator.app.writes()]
    assert statuses == [429, 200]
    assert "ops" in env.emulator.groups


# -- keys, the signed-in account, names and values ----------------------------------------


def test_accounts_are_read_by_id_across_pages_after_a_rename_by_hand(env: TargetEnv) -> None:
    for i in range(12):
        env.emulator.seed_user(f"id{i:02d}", f"id{i}@example.com", f"Id {i}", active=i != 3)
    ids = {name: str(env.emulator.users[name].id) for name in ("id03", "id07")}
    env.emulator.rename_user("id07", "id07.renamed")
    env.emulator.app.clear_log()

    users = env.target.read_users_by_key([*ids.values(), "999999", "not-a-number"])

    assert dict(zip(users["target_key"], users["username"], strict=True)) == {
        ids["id03"]: "id03",
        ids["id07"]: "id07.renamed",
    }
    assert dict(zip(users["username"], users["active"], strict=True)) == {
        "id03": False,
        "id07.renamed": True,
    }
    listed = [r.query["start"] for r in env.emulator.app.requests if r.path == f"{API}/admin/users"]
    assert listed == ["0", "5", "10"]  # 12 seeded + admin + harness user, 5 per page


def test_current_account_is_the_name_bitbucket_signs_in(env: TargetEnv) -> None:
    assert env.target.current_account() == "admin"
    env.emulator.seed_user(
        "jörg müller", "jorg@example.com", "Jörg", password="pw", permission="ADMIN"
    )
    client = ApiClient(
        "bitbucket 'bb'",
        env.target.client.base_url,
        auth=httpx.BasicAuth("JÖRG MÜLLER", "pw"),
        retry=RetryPolicy(sleep=lambda _s: None),
    )
    with BitbucketTarget("bb", client, admin_username="JÖRG MÜLLER") as target:
        # The header spells the name percent-encoded; the stored spelling comes back.
        assert target.current_account() == "jörg müller"
    sent = [r for r in env.emulator.app.requests if r.auth == "basic"]
    assert sent and all(r.method == "GET" for r in sent)


def test_emulator_names_the_account_in_x_ausername(env: TargetEnv) -> None:
    with admin_api(env) as api:
        answer = api.get("/admin/users", params={"limit": 1})
    assert answer.headers["X-AUSERNAME"] == "admin"
    assert answer.headers["X-AUSERID"] == str(env.emulator.users["admin"].id)
    with httpx.Client(base_url=env.target.client.base_url, timeout=10) as anonymous:
        assert "X-AUSERNAME" not in anonymous.get("/application-properties").headers


def test_create_whose_answer_is_lost_is_posted_once_and_still_licensed(env: TargetEnv) -> None:
    env.emulator.app.faults.only_methods = ("POST",)
    env.emulator.app.faults.script.append("applied-drop")

    key = env.target.create_user("lost", "lost@example.com", "Lost")

    assert key == str(env.emulator.users["lost"].id)
    assert direct_permission(env, "lost") == "LICENSED_USER"
    writes = [(w.method, w.path, w.status, w.applied_status) for w in env.emulator.app.writes()]
    assert writes == [
        ("POST", f"{API}/admin/users", -1, 204),
        ("PUT", f"{API}/admin/permissions/users", 204, 0),
    ]


def test_rename_whose_answer_is_lost_is_not_sent_again(env: TargetEnv) -> None:
    env.emulator.seed_user("before", "b@example.com", "Before")
    user_id = env.emulator.users["before"].id
    env.emulator.app.faults.only_methods = ("POST",)
    env.emulator.app.faults.script.append("applied-500")

    env.target.update_user("before", {"username": "after"})

    assert env.emulator.users["after"].id == user_id and "before" not in env.emulator.users
    assert [(w.status, w.applied_status) for w in env.emulator.app.writes()] == [(500, 200)]


def test_update_always_sends_display_name_and_email(env: TargetEnv) -> None:
    env.emulator.seed_user("both", "both@old.example", "Both Old")
    env.emulator.app.clear_log()

    env.target.update_user(
        "both",
        {"display_name": "Both New"},
        desired={"username": "both", "email": "both@old.example", "display_name": "Both New"},
    )
    env.target.update_user("both", {"email": "both@new.example"})  # no desired: read first

    puts = [w.body for w in env.emulator.app.writes() if w.method == "PUT"]
    assert puts == [
        {"name": "both", "displayName": "Both New", "email": "both@old.example"},
        {"name": "both", "displayName": "Both New", "email": "both@new.example"},
    ]
    with admin_api(env) as api:
        partial = api.put("/admin/users", json={"name": "both", "displayName": "Only"})
    assert partial.status_code == 400 and partial.json()["errors"][0]["context"] == "email"


@pytest.mark.parametrize("name", ["nul\x00name", "bell\x07", "bidi\u202ename", "n" * 256])
def test_names_bitbucket_refuses_are_refused_by_the_client_and_the_emulator(
    env: TargetEnv, name: str
) -> None:
    env.emulator.app.clear_log()
    for kind, create in (("user", env.target.create_user), ("group", env.target.create_group)):
        assert env.target.refused_name(kind, name)
        with pytest.raises(TargetRejectedError, match="nothing was sent"):
            create(name, "x@example.com", "X") if kind == "user" else create(name)
    assert env.emulator.app.requests == []

    with admin_api(env) as api:
        user = api.post(
            "/admin/users",
            params={"name": name, "displayName": "X", "emailAddress": "x@e.com", "password": "p"},
        )
        group = api.post("/admin/groups", params={"name": name})
    for answer in (user, group):
        assert answer.status_code == 400
        assert set(answer.json()["errors"][0]) == {"context", "message", "exceptionName"}


def test_spaces_at_signs_and_plus_are_fine_in_bitbucket_usernames(env: TargetEnv) -> None:
    for name in ("first last", "dev@example.com", "a+b"):
        assert env.target.refused_name("user", name) is None
        env.target.create_user(name, "x@example.com", "X")
        assert name in env.emulator.users


def test_bitbucket_trims_values_as_stored_form_says(env: TargetEnv) -> None:
    desired = pd.DataFrame(
        {"username": ["  Pat.Trim "], "email": [" Pat@Example.COM "], "display_name": ["  Pat  "]}
    )

    key = env.target.create_user(*desired.iloc[0])

    user = env.emulator.users["pat.trim"]
    assert str(user.id) == key
    assert (user.name, user.email, user.display_name) == tuple(
        env.target.stored_form(desired).iloc[0]
    )
    assert (user.name, user.email, user.display_name) == ("Pat.Trim", "Pat@Example.COM", "Pat")


# -- administrators ------------------------------------------------------------------------


def test_administrators_hold_admin_or_sys_admin_not_a_lower_level(env: TargetEnv) -> None:
    levels = {"root": "SYS_ADMIN", "boss": "ADMIN", "maker": "PROJECT_CREATE", "plain": None}
    for name, level in levels.items():
        env.emulator.seed_user(name, f"{name}@example.com", name.title(), permission=level)
    for name in ("deep", "builder", "member"):
        env.emulator.seed_user(name, f"{name}@example.com", name.title(), active=False)
    env.emulator.seed_admin_group("sysops", members=["deep"], permission="SYS_ADMIN")
    env.emulator.seed_group("creators", members=["builder"], permission="PROJECT_CREATE")
    env.emulator.seed_group(DEFAULT_GROUP, members=["member"])  # LICENSED_USER
    env.emulator.app.clear_log()

    admins = env.target.administrators()

    assert admins == {"admin", "root", "boss", "deep"}
    # The same accounts Bitbucket itself gives ADMIN or above, directly or through a group.
    everyone = [*levels, "deep", "builder", "member"]
    assert admins - {"admin"} == {
        name
        for name in everyone
        if env.emulator.effective_permission(name) in ("ADMIN", "SYS_ADMIN")
    }
    assert {r.method for r in env.emulator.app.requests} == {"GET"}
    # The members of a group are read only when the group holds an admin level.
    contexts = [
        r.query.get("context") for r in env.emulator.app.requests if "more-members" in r.path
    ]
    assert contexts == ["sysops"]
