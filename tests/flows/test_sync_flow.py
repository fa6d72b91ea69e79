"""The `sync` flow end to end: a real slapd, the sandbox Jira over HTTP, a Prefect test server.

Every assertion is something an admin would check: the account in Jira (read back through
its REST API), the emulator's request log (zero writes), the store's audit trail, the run's
name and artifacts in Prefect.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest
from prefect.client.orchestration import get_client
from usersync_flows.sync import SyncFailed, sync
from usersync_sandbox.server import free_port
from usersync_sandbox.slapd import SlapdServer

from tests.flows.conftest import JIRA_PASSWORD
from usersync.errors import ConfigError, GuardError, SourceAuthError
from usersync.store import Store, store_url

pytestmark = [pytest.mark.slapd, pytest.mark.prefect, pytest.mark.usefixtures("prefect_server")]

ACTIVE_WITH_MAIL = 18  # sample.ldif: 20 users, one disabled, one without mail


def jira_user(url: str, username: str) -> dict | None:
    response = httpx.get(
        f"{url}/rest/api/2/user",
        params={"username": username, "expand": "groups"},
        auth=("admin", JIRA_PASSWORD),
    )
    if response.status_code == 404:
        return None
    response.raise_for_status()
    return response.json()


def jira_user_groups_named(url: str, group: str) -> list[str]:
    """The groups Jira's group picker finds with exactly this name (none: it does not exist)."""
    found = httpx.get(
        f"{url}/rest/api/2/groups/picker",
        params={"query": group, "maxResults": 50},
        auth=("admin", JIRA_PASSWORD),
    ).json()
    return [g["name"] for g in found["groups"] if g["name"].casefold() == group.casefold()]


def jira_group_members(url: str, group: str) -> set[str]:
    members: set[str] = set()
    start = 0
    while True:
        page = httpx.get(
            f"{url}/rest/api/2/group/member",
            params={"groupname": group, "includeInactiveUsers": "true", "startAt": start},
            auth=("admin", JIRA_PASSWORD),
        ).json()
        members |= {u["name"] for u in page["values"]}
        if page["isLast"]:
            return members
        start += len(page["values"])


def test_sync_provisions_the_directory_and_a_second_run_plans_nothing(make_profile, jira):
    emulator, url = jira
    make_profile(url)

    outcomes = sync(profile="testprof")

    (jira_outcome,) = outcomes
    assert jira_outcome["status"] == "succeeded"
    assert jira_outcome["executed"]["create_user"]["succeeded"] == ACTIVE_WITH_MAIL
    assert jira_outcome["rejected"] == 1  # nwilson has no e-mail
    alice = jira_user(url, "asmith")
    assert alice is not None
    assert alice["emailAddress"] == "asmith@example.org"
    assert alice["displayName"] == "Alice Smith"
    assert alice["active"] is True
    assert {g["name"] for g in alice["groups"]["items"]} >= {"jira-software-users"}
    assert jira_user(url, "Zmueller")["displayName"] == "Zoë Müller"
    assert jira_user(url, "mjones") is not None  # MJones in the directory, stored lower case
    assert jira_user(url, "nwilson") is None  # no e-mail: reported, not created
    assert jira_user(url, "mgonzalez") is None  # disabled in the directory: not created
    engineering = {"bjohnson", "cwilliams", "dbrown"}  # direct members in sample.ldif
    assert engineering <= jira_group_members(url, "developers")
    # A manual rule maps "engineering"; the on-the-fly "*" does not copy it under its own name.
    assert jira_user_groups_named(url, "engineering") == []
    assert {"fgarcia", "gmiller"} <= jira_group_members(url, "platform")  # on-the-fly

    store = Store.open(store_url())
    (run,) = store.runs("testprof").to_dict("records")
    operations = store.operations(run["id"])
    assert len(operations) == sum(jira_outcome["planned"].values())
    assert set(operations["status"]) == {"succeeded"}
    ledger = store.ledger("testprof", "jira")
    assert (ledger["kind"] == "user").sum() == ACTIVE_WITH_MAIL

    writes_after_first = len(emulator.app.writes())
    again = sync(profile="testprof")
    assert again[0]["planned"] == {}
    assert len(emulator.app.writes()) == writes_after_first


def test_flow_run_is_named_after_the_profile_and_publishes_plan_and_summary(make_profile, jira):
    _, url = jira
    make_profile(url, name="named-prof")
    sync(profile="named-prof", dry_run=True)

    async def read():
        async with get_client() as client:
            runs = await client.read_flow_runs()
            plan = await client.read_latest_artifacts()
            return runs, plan

    runs, artifacts = asyncio.run(read())
    assert "sync-named-prof-dry-run" in {r.name for r in runs}  # a dry run says so
    keys = {a.key for a in artifacts}
    assert {"plan-named-prof-jira", "summary-named-prof"} <= keys
    summary = next(a for a in artifacts if a.key == "summary-named-prof")
    assert "dry run" in summary.data


def test_dry_run_makes_zero_writes_and_plans_everything(make_profile, jira):
    emulator, url = jira
    make_profile(url)

    outcomes = sync(profile="testprof", dry_run=True)

    assert emulator.app.writes() == []
    assert outcomes[0]["status"] == "planned"
    assert outcomes[0]["planned"]["create_user"] == ACTIVE_WITH_MAIL
    assert jira_user(url, "asmith") is None


@pytest.mark.parametrize(
    ("attributes", "message"),
    [
        (
            "target,source,colour\nusername,uid,red\n",
            "line 1: unknown column(s) 'colour'",
        ),
        (
            "target,source,transform\nusername,uid,lower\nemail,mail,lowercase\n",
            "line 3: unknown transform 'lowercase' (known: lower, upper, strip, regex, template)",
        ),
        (
            "target,source,transform,regex,replacement\nusername,uid,regex,([a-z,\\1\n",
            "line 2: invalid regex",
        ),
    ],
)
def test_bad_mapping_table_fails_before_any_request(make_profile, jira, attributes, message):
    emulator, url = jira
    make_profile(url, attributes=attributes)

    with pytest.raises(ConfigError, match=r"attributes\.csv") as error:
        sync(profile="testprof")

    assert message in str(error.value)
    assert emulator.app.requests == []


def test_failed_ldap_bind_fails_clearly_with_zero_writes(make_profile, jira, directory):
    emulator, url = jira
    make_profile(url, ldap_password="not-the-password")

    with pytest.raises(SourceAuthError) as error:
        sync(profile="testprof")

    assert directory.admin_dn in str(error.value)
    assert "not-the-password" not in str(error.value)
    assert emulator.app.requests == []
    (run,) = Store.open(store_url()).runs("testprof").to_dict("records")
    assert run["status"] == "failed"
    assert run["error"].startswith("source: ")


def test_unreachable_jira_fails_that_target_clearly(make_profile):
    dead = f"http://127.0.0.1:{free_port()}/jira"
    make_profile(dead)

    with pytest.raises(SyncFailed, match="jira: failed") as error:
        sync(profile="testprof")

    assert "no answer from" in str(error.value)
    store = Store.open(store_url())
    (run,) = store.runs("testprof").to_dict("records")
    assert run["status"] == "failed"
    assert "127.0.0.1" in run["error"]


def test_empty_source_stops_the_run_before_any_request(make_profile, jira):
    emulator, url = jira
    make_profile(url, extra_source="  user_filter: (uid=nobody-by-this-name)")

    with pytest.raises(GuardError, match="0 user"):
        sync(profile="testprof")

    assert emulator.app.requests == []


def test_directory_changes_reach_jira(make_profile, jira):
    """Leaving, disabled, renamed, new e-mail, left a group: each lands on the same account."""
    _, url = jira
    with SlapdServer.for_demo() as directory:
        make_profile(url, ldap_url=directory.url)
        sync(profile="testprof")
        key_before = jira_user(url, "bjohnson")["key"]
        assert "cwilliams" in jira_group_members(url, "developers")

        import ldap3

        conn = ldap3.Connection(
            directory.url, directory.admin_dn, directory.admin_password, auto_bind=True
        )
        people = f"ou=people,{directory.base_dn}"
        groups = f"ou=groups,{directory.base_dn}"
        assert conn.delete(f"uid=dbrown,{people}")
        assert conn.modify(
            f"uid=ejones,{people}", {"employeeType": [(ldap3.MODIFY_REPLACE, ["inactive"])]}
        )
        assert conn.modify(
            f"uid=asmith,{people}", {"mail": [(ldap3.MODIFY_REPLACE, ["alice.smith@example.org"])]}
        )
        assert conn.modify_dn(f"uid=bjohnson,{people}", "uid=bjohnson2")
        # slapd here runs without the refint overlay: move the renamed member by hand, as
        # refint (or AD) would
        assert conn.modify(
            f"cn=engineering,{groups}",
            {
                "member": [
                    (ldap3.MODIFY_DELETE, [f"uid=cwilliams,{people}", f"uid=bjohnson,{people}"]),
                    (ldap3.MODIFY_ADD, [f"uid=bjohnson2,{people}"]),
                ]
            },
        )
        conn.unbind()

        outcomes = sync(profile="testprof")

    planned = outcomes[0]["planned"]
    assert planned["deactivate_user"] == 2
    assert jira_user(url, "dbrown")["active"] is False
    assert jira_user(url, "ejones")["active"] is False
    assert jira_user(url, "asmith")["emailAddress"] == "alice.smith@example.org"
    renamed = jira_user(url, "bjohnson2")
    assert renamed is not None and renamed["key"] == key_before
    assert jira_user(url, "bjohnson") is None
    assert "cwilliams" not in jira_group_members(url, "developers")
    assert "bjohnson2" in jira_group_members(url, "developers")


def test_mass_deactivation_is_refused_before_any_write(make_profile, jira):
    emulator, url = jira
    make_profile(url, extra_settings="  max_deactivations: 3")
    sync(profile="testprof")
    writes = len(emulator.app.writes())

    make_profile(
        url, extra_settings="  max_deactivations: 3", extra_source="  user_filter: (uid=a*)"
    )
    with pytest.raises(SyncFailed, match="brake"):
        sync(profile="testprof")

    assert len(emulator.app.writes()) == writes
    assert jira_user(url, "bjohnson")["active"] is True


def test_cli_sync_dry_run_runs_the_flow_and_writes_nothing(make_profile, jira, capsys):
    from usersync_cli.main import main

    emulator, url = jira
    make_profile(url)

    assert main(["sync", "testprof", "--dry-run"]) == 0

    assert "jira: planned" in capsys.readouterr().out
    assert emulator.app.writes() == []
    assert emulator.app.requests  # it did read the target to plan
