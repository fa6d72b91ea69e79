"""Lifecycle edges end to end: a real slapd, the sandbox Jira over HTTP, the `sync` flow.

Each test is one of the ways identity syncs leave access behind or lock people out; the
expected outcome is written from what an administrator would check in Jira (over its REST
API) and in the store, never from what the planner computes.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import ldap3
import pytest
from usersync_flows.sync import SyncFailed, sync
from usersync_sandbox.slapd import SlapdServer

from tests.flows.conftest import JIRA_PASSWORD
from tests.flows.test_sync_flow import jira_group_members, jira_user
from usersync import sync as engine
from usersync.errors import ConfigError
from usersync.load import execute_plan
from usersync.store import Store, store_url
from usersync.targets.jira import JiraTarget

pytestmark = [pytest.mark.slapd, pytest.mark.prefect, pytest.mark.usefixtures("prefect_server")]

ON_THE_FLY = "source_group,target_group,mode,targets\n*,,on-the-fly,\n"


@pytest.fixture
def own_directory() -> Iterator[SlapdServer]:
    """A directory of this test's own: these tests change it."""
    with SlapdServer.for_demo() as server:
        yield server


def connect(directory: SlapdServer) -> ldap3.Connection:
    return ldap3.Connection(
        directory.url, directory.admin_dn, directory.admin_password, auto_bind=True
    )


def people(directory: SlapdServer) -> str:
    return f"ou=people,{directory.base_dn}"


def groups(directory: SlapdServer) -> str:
    return f"ou=groups,{directory.base_dn}"


def jira_accounts_with_email(url: str, email: str) -> list[dict]:
    found = httpx.get(
        f"{url}/rest/api/2/user/search",
        params={"username": ".", "includeInactive": "true", "maxResults": 1000},
        auth=("admin", JIRA_PASSWORD),
    ).json()
    return [u for u in found if u.get("emailAddress", "").casefold() == email.casefold()]


def jira_rename(url: str, old: str, new: str) -> None:
    """What an administrator does in Jira's user admin screen."""
    response = httpx.put(
        f"{url}/rest/api/2/user",
        params={"username": old},
        json={"name": new},
        auth=("admin", JIRA_PASSWORD),
    )
    response.raise_for_status()


def test_recreated_user_takes_over_the_account_instead_of_being_locked_out(
    make_profile, jira, own_directory
):
    emulator, url = jira
    make_profile(url, ldap_url=own_directory.url)
    sync(profile="testprof")
    key = jira_user(url, "asmith")["key"]

    # Deleted and re-created with the same username: a new entryUUID.
    conn = connect(own_directory)
    dn = f"uid=asmith,{people(own_directory)}"
    assert conn.delete(dn)
    assert conn.add(
        dn,
        "inetOrgPerson",
        {
            "uid": "asmith",
            "cn": "Alice Smith",
            "sn": "Smith",
            "mail": "asmith@example.org",
            "employeeType": "staff",
        },
    )
    conn.unbind()

    outcomes = sync(profile="testprof")

    alice = jira_user(url, "asmith")
    assert alice["key"] == key
    assert alice["active"] is True
    assert len(jira_accounts_with_email(url, "asmith@example.org")) == 1
    assert outcomes[0]["planned"].get("relink_user") == 1
    assert "deactivate_user" not in outcomes[0]["planned"]
    # ...and it stays so: the next run changes nothing.
    writes = len(emulator.app.writes())
    assert sync(profile="testprof")[0]["planned"] == {}
    assert len(emulator.app.writes()) == writes


def test_disabled_user_whose_mail_was_cleared_loses_access(make_profile, jira, own_directory):
    _, url = jira
    make_profile(url, ldap_url=own_directory.url)
    sync(profile="testprof")
    assert jira_user(url, "ejones")["active"] is True

    # Off-boarding as it usually happens: the account is disabled and the mailbox removed.
    conn = connect(own_directory)
    assert conn.modify(
        f"uid=ejones,{people(own_directory)}",
        {
            "employeeType": [(ldap3.MODIFY_REPLACE, ["inactive"])],
            "mail": [(ldap3.MODIFY_DELETE, [])],
        },
    )
    conn.unbind()

    outcomes = sync(profile="testprof")

    assert jira_user(url, "ejones")["active"] is False
    assert outcomes[0]["executed"]["deactivate_user"]["succeeded"] == 1


def test_active_user_whose_mapping_is_rejected_keeps_the_account(make_profile, jira, own_directory):
    _, url = jira
    make_profile(url, ldap_url=own_directory.url)
    sync(profile="testprof")

    conn = connect(own_directory)
    assert conn.modify(
        f"uid=fgarcia,{people(own_directory)}", {"mail": [(ldap3.MODIFY_DELETE, [])]}
    )
    conn.unbind()

    outcomes = sync(profile="testprof")

    assert jira_user(url, "fgarcia")["active"] is True
    assert outcomes[0]["rejected"] == 2  # nwilson as before, and fgarcia now
    assert "deactivate_user" not in outcomes[0]["planned"]


@pytest.mark.parametrize("change", ["emptied", "renamed", "deleted"])
def test_on_the_fly_memberships_are_revoked_when_the_source_group_goes(
    make_profile, jira, own_directory, change
):
    emulator, url = jira
    make_profile(url, ldap_url=own_directory.url, groups=ON_THE_FLY)
    sync(profile="testprof")
    assert {"ejones", "hdavis", "irodriguez", "mjones"} <= jira_group_members(url, "sales")
    # A hand-made account added by hand to the same group is not usersync's to remove.
    emulator.seed_user("visitor", "visitor@example.com", "Visitor")
    emulator.seed_group("sales", members=["visitor"])

    conn = connect(own_directory)
    dn = f"cn=sales,{groups(own_directory)}"
    if change == "emptied":
        # groupOfNames needs a member: leave one that is no user.
        assert conn.modify(
            dn, {"member": [(ldap3.MODIFY_REPLACE, [f"cn=nobody,{people(own_directory)}"])]}
        )
    elif change == "renamed":
        assert conn.modify_dn(dn, "cn=sales-emea")
    else:
        assert conn.delete(dn)
    conn.unbind()

    sync(profile="testprof")

    assert jira_group_members(url, "sales") == {"visitor"}
    if change == "renamed":
        assert {"ejones", "hdavis", "irodriguez", "mjones"} <= jira_group_members(url, "sales-emea")
    writes = len(emulator.app.writes())
    assert sync(profile="testprof")[0]["planned"] == {}
    assert len(emulator.app.writes()) == writes


def test_renamed_source_group_behind_a_manual_rule_trips_the_brake(
    make_profile, jira, own_directory
):
    emulator, url = jira
    rules = "source_group,target_group,mode,targets\nall-staff,jira-software-users,manual,\n"
    make_profile(url, ldap_url=own_directory.url, groups=rules)
    sync(profile="testprof")
    members = jira_group_members(url, "jira-software-users")
    assert len(members) >= 10
    writes = len(emulator.app.writes())

    conn = connect(own_directory)
    assert conn.modify_dn(f"cn=all-staff,{groups(own_directory)}", "cn=everyone")
    conn.unbind()

    with pytest.raises(SyncFailed, match=r"removals from group 'jira-software-users'") as error:
        sync(profile="testprof")

    assert "allow_mass_changes" in str(error.value)
    assert len(emulator.app.writes()) == writes
    assert jira_group_members(url, "jira-software-users") == members
    # Released for one run, the removals go through.
    sync(profile="testprof", allow_mass_changes=True)
    assert jira_group_members(url, "jira-software-users") == set()


def test_an_unexpected_exception_fails_one_operation_and_revocations_still_run(
    make_profile, jira, own_directory
):
    """A failed write for a user never holds back taking access away from that user."""
    _emulator, url = jira
    make_profile(url, ldap_url=own_directory.url)
    sync(profile="testprof")
    conn = connect(own_directory)
    # bjohnson gets a new display name (an update) and leaves engineering (a removal).
    assert conn.modify(
        f"uid=bjohnson,{people(own_directory)}",
        {"displayName": [(ldap3.MODIFY_REPLACE, ["Bob J."])]},
    )
    assert conn.modify(
        f"cn=engineering,{groups(own_directory)}",
        {"member": [(ldap3.MODIFY_DELETE, [f"uid=bjohnson,{people(own_directory)}"])]},
    )
    # ...and cwilliams leaves the company.
    assert conn.delete(f"uid=cwilliams,{people(own_directory)}")
    conn.unbind()

    class OddJira(JiraTarget):
        def update_user(self, username, changes, desired=None):
            raise ConfigError("an odd error no target raises normally")

    loaded = engine.prepare_profile("testprof")
    snapshot = engine.extract(loaded)
    desired = engine.transform(loaded, snapshot, "jira")
    store = Store.open(store_url())
    with OddJira("jira", url, username="admin", password=JIRA_PASSWORD) as target:
        planned = engine.plan_target_sync(loaded, "jira", target, desired, store)
        result = execute_plan(target, planned.plan)

    by_op = {o.op: o for o in result.outcomes}
    assert by_op["update_user"].status == "failed"
    assert "ConfigError" in by_op["update_user"].error
    assert "bjohnson" not in jira_group_members(url, "developers")
    assert jira_user(url, "cwilliams")["active"] is False


def test_account_usersync_signs_in_with_a_token_is_never_touched(
    make_profile, jira, own_directory, monkeypatch
):
    emulator, url = jira
    # The token belongs to an administrator who is also a person in the directory.
    emulator.seed_user("asmith", "alice.admin@corp.example", "Alice (admin)", admin=True)
    emulator.seed_group("jira-administrators", members=["asmith"])
    emulator.add_token("sync-token", "asmith")
    monkeypatch.setenv("TEST_JIRA_TOKEN", "sync-token")
    folder = make_profile(url, ldap_url=own_directory.url)
    text = (folder / "profile.yaml").read_text()
    text = text.replace(
        "auth: {kind: basic, username: admin, password: {env: TEST_JIRA_PASSWORD}}",
        "auth: {kind: token, token: {env: TEST_JIRA_TOKEN}}",
    ).replace("protected_usernames: [admin]", "protected_usernames: []")
    (folder / "profile.yaml").write_text(text)

    sync(profile="testprof")
    conn = connect(own_directory)
    assert conn.modify(
        f"uid=asmith,{people(own_directory)}",
        {"employeeType": [(ldap3.MODIFY_REPLACE, ["inactive"])]},
    )
    conn.unbind()
    sync(profile="testprof")

    me = jira_user(url, "asmith")
    assert me["active"] is True
    assert me["emailAddress"] == "alice.admin@corp.example"
    assert me["displayName"] == "Alice (admin)"
    ledger = Store.open(store_url()).ledger("testprof", "jira")
    assert me["key"] not in set(ledger["target_key"])


def test_account_renamed_by_hand_in_jira_is_renamed_back_not_duplicated(
    make_profile, jira, own_directory
):
    _emulator, url = jira
    make_profile(url, ldap_url=own_directory.url)
    sync(profile="testprof")
    key = jira_user(url, "bjohnson")["key"]

    jira_rename(url, "bjohnson", "bob.hand")
    sync(profile="testprof")

    assert jira_user(url, "bob.hand") is None
    assert jira_user(url, "bjohnson")["key"] == key
    assert len(jira_accounts_with_email(url, "bjohnson@example.org")) == 1
    assert "bjohnson" in jira_group_members(url, "developers")


def test_run_killed_after_a_rename_keeps_track_of_the_account(make_profile, jira, own_directory):
    _emulator, url = jira
    make_profile(url, ldap_url=own_directory.url)
    sync(profile="testprof")
    key = jira_user(url, "dbrown")["key"]
    conn = connect(own_directory)
    assert conn.modify_dn(f"uid=dbrown,{people(own_directory)}", "uid=dbrown2")
    conn.unbind()

    # The run renames the account in Jira, then dies before recording the outcome.
    loaded = engine.prepare_profile("testprof")
    desired = engine.transform(loaded, engine.extract(loaded), "jira")
    store = Store.open(store_url())
    with engine.open_target_for(loaded, "jira") as target:
        planned = engine.plan_target_sync(loaded, "jira", target, desired, store)
        run_id = store.start_run("testprof", "jira", dry_run=False)
        store.record_plan(run_id, planned.plan)
        (rename,) = planned.plan.loc[planned.plan["op"] == "update_user"].itertuples()
        target.update_user(rename.username, {"username": "dbrown2"})
    assert jira_user(url, "dbrown2")["key"] == key

    # Later the person leaves: the account must still be found and deactivated.
    conn = connect(own_directory)
    assert conn.delete(f"uid=dbrown2,{people(own_directory)}")
    conn.unbind()
    sync(profile="testprof")

    assert jira_user(url, "dbrown2")["active"] is False
    runs = Store.open(store_url()).runs("testprof")
    killed = runs.loc[runs["id"] == run_id].iloc[0]
    assert killed["status"] == "interrupted"
    operations = Store.open(store_url()).operations(run_id)
    assert set(operations["status"]) == {"unknown"}


def test_a_second_run_of_a_profile_waits_or_stops_cleanly(make_profile, jira, capfd):
    import threading

    from usersync_cli.main import main

    from usersync.errors import ProfileBusyError

    emulator, url = jira
    make_profile(url)
    store = Store.open(store_url())
    assert store.acquire_lease("testprof", "the scheduled run", seconds=600) is None

    with pytest.raises(ProfileBusyError, match="being synced by the scheduled run"):
        sync(profile="testprof")
    assert emulator.app.requests == []
    capfd.readouterr()
    assert main(["sync", "testprof"]) == 1
    err = capfd.readouterr().err
    assert "error: profile testprof is being synced by the scheduled run" in err
    assert "Traceback" not in err  # one clear line, not Prefect's traceback before it
    assert emulator.app.requests == []

    # With a wait, it starts once the other run is done.
    threading.Timer(1.0, store.release_lease, ("testprof", "the scheduled run")).start()
    outcomes = sync(profile="testprof", wait_seconds=30)
    assert outcomes[0]["status"] == "succeeded"
    assert store.acquire_lease("testprof", "next", seconds=1) is None  # released after the run


def test_a_value_the_product_trims_is_compared_as_stored_and_not_resent(make_profile, jira):
    emulator, url = jira
    attributes = (
        "target,source,transform,regex,replacement,template,default\n"
        "username,uid,strip lower,,,,\n"
        "email,mail,strip lower,,,,\n"
        "display_name,,template,,,{givenName} {sn} ,\n"  # a trailing blank Jira trims
    )
    make_profile(url, attributes=attributes)
    sync(profile="testprof")
    assert jira_user(url, "asmith")["displayName"] == "Alice Smith"

    writes = len(emulator.app.writes())
    again = sync(profile="testprof")

    assert again[0]["planned"] == {}
    assert len(emulator.app.writes()) == writes


def test_a_target_that_keeps_answering_429_stops_at_its_time_budget(make_profile, jira):
    import time

    emulator, url = jira
    make_profile(
        url,
        extra_targets="    load_budget_seconds: 3\n    max_attempts: 20",
    )
    # Every write is refused with 429 and a Retry-After of 2 s, for as long as it takes.
    emulator.app.faults.rate_limit_every = 1
    emulator.app.faults.retry_after_seconds = 2
    emulator.app.faults.only_methods = ("POST", "PUT", "DELETE")

    started = time.monotonic()
    with pytest.raises(SyncFailed, match="time budget"):
        sync(profile="testprof")
    assert time.monotonic() - started < 30

    (run,) = Store.open(store_url()).runs("testprof").to_dict("records")
    operations = Store.open(store_url()).operations(run["id"])
    skipped = operations.loc[operations["status"] == "skipped"]
    assert len(skipped) > 0
    assert skipped["error"].str.contains("time budget").all()
    assert set(operations["status"]) <= {"failed", "skipped"}  # nothing left "planned"


def test_the_summary_lists_rejected_users_failed_operations_and_conflicts(make_profile, jira):
    import asyncio

    from prefect.client.orchestration import get_client

    emulator, url = jira
    # An account named like a source user, with another e-mail: not adopted, a conflict.
    emulator.seed_user("asmith", "someone.else@example.com", "Not Alice")
    make_profile(url)
    # The product refuses the first write outright: a failed operation.
    emulator.app.faults.only_methods = ("POST",)
    emulator.app.faults.script.append("400")
    with pytest.raises(SyncFailed, match="jira: partial"):
        sync(profile="testprof")

    async def summary():
        async with get_client() as client:
            artifacts = await client.read_latest_artifacts()
        return next(a for a in artifacts if a.key == "summary-testprof").data

    text = asyncio.run(summary())
    assert "## jira: source users not provisioned (rejected)" in text
    assert "no e-mail address" in text  # nwilson
    assert "## jira: no operation planned for" in text
    assert "its e-mail differs" in text
    assert "## jira: failed operations" in text


@pytest.mark.parametrize("adoption", ["username_and_email", "username"])
def test_a_source_user_named_like_an_administrator_never_takes_the_account_over(
    make_profile, jira, own_directory, adoption
):
    emulator, url = jira
    # An administrator nobody listed as protected, and an IdP user given the same name and
    # the attacker's address.
    emulator.seed_user("jira-sysadmin", "root@corp.example", "Root", admin=True)
    conn = connect(own_directory)
    assert conn.add(
        f"uid=JIRA-SYSADMIN,{people(own_directory)}",
        "inetOrgPerson",
        {"uid": "JIRA-SYSADMIN", "cn": "X", "sn": "X", "mail": "attacker@evil.example"},
    )
    conn.unbind()
    make_profile(url, ldap_url=own_directory.url, extra_settings=f"  adoption: {adoption}")

    sync(profile="testprof")

    root = jira_user(url, "jira-sysadmin")
    assert root["emailAddress"] == "root@corp.example"
    assert root["displayName"] == "Root"
    ledger = Store.open(store_url()).ledger("testprof", "jira")
    assert root["key"] not in set(ledger["target_key"])


def test_two_profiles_on_one_jira_never_take_each_others_accounts(make_profile, jira):
    emulator, url = jira
    # Employees: the whole directory. Contractors: a second profile that lists three of them
    # with the same e-mail (so adoption by e-mail would take them) and other display names.
    make_profile(url, name="employees")
    make_profile(
        url,
        name="contractors",
        extra_source="  user_filter: (|(employeeType=contractor)(uid=rtaylor))",
        attributes=(
            "target,source,transform,regex,replacement,template,default\n"
            "username,uid,strip lower,,,,\n"
            "email,mail,strip lower,,,,\n"
            "display_name,,template,,,{cn} (contractor),\n"
        ),
        groups="source_group,target_group,mode,targets\n,contractors,default,\n",
    )
    sync(profile="employees")
    owned = {name: jira_user(url, name) for name in ("dbrown", "pthomas", "rtaylor")}

    outcomes = sync(profile="contractors")

    conflicts = {c["username"] for c in outcomes[0]["conflicts"]}
    assert conflicts == {"dbrown", "pthomas", "rtaylor"}  # each reported, none changed
    for name, before in owned.items():
        after = jira_user(url, name)
        assert after["key"] == before["key"]
        assert after["emailAddress"] == before["emailAddress"]
        assert after["displayName"] == before["displayName"]
        assert "contractors" not in {g["name"] for g in after["groups"]["items"]}
    store = Store.open(store_url())
    contractor_keys = set(store.ledger("contractors", "jira")["target_key"])
    assert not contractor_keys & {u["key"] for u in owned.values()}

    # Second runs of both: nothing planned, nothing written; and a profile's deactivations
    # never reach the other's accounts.
    writes = len(emulator.app.writes())
    assert sync(profile="employees")[0]["planned"] == {}
    assert sync(profile="contractors")[0]["planned"] == {}
    assert len(emulator.app.writes()) == writes


def test_a_group_created_by_someone_else_between_plan_and_load_is_not_a_failure(make_profile, jira):
    """Two profiles creating the same missing group at once (found by the scale-out test)."""
    emulator, url = jira
    make_profile(url)
    loaded = engine.prepare_profile("testprof")
    desired = engine.transform(loaded, engine.extract(loaded), "jira")
    store = Store.open(store_url())
    with engine.open_target_for(loaded, "jira") as target:
        planned = engine.plan_target_sync(loaded, "jira", target, desired, store)
        assert "developers" in set(planned.plan.loc[planned.plan["op"] == "create_group", "group"])
        emulator.seed_group("developers")  # the other profile got there first
        run_id = store.start_run("testprof", "jira", dry_run=False)
        store.record_plan(run_id, planned.plan)
        result = engine.load_target_sync(loaded, target, planned, store, run_id)

    assert result.status == "succeeded"
    assert "bjohnson" in jira_group_members(url, "developers")
