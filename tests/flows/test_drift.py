"""The drift report after real syncs: slapd, the sandbox Jira over HTTP, the sync flow.

Each kind of drift is made the way it happens (an administrator's hand edit, an off-boarding
that cannot complete, a rule deleted, a store restored) and read back as an administrator
would: the `drift-<profile>` artifact and `usersync drift`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import ldap3
import pytest
from prefect.client.orchestration import get_client
from usersync_cli.main import main
from usersync_flows.sync import sync
from usersync_sandbox.slapd import SlapdServer

from tests.flows.conftest import TEST_GROUPS
from usersync.config import instance_of
from usersync.store import LedgerEntry, Store, store_url

pytestmark = [pytest.mark.slapd, pytest.mark.prefect, pytest.mark.usefixtures("prefect_server")]


@pytest.fixture
def own_directory() -> Iterator[SlapdServer]:
    with SlapdServer.for_demo() as server:
        yield server


def latest_markdown(key: str) -> str:
    async def read() -> str:
        async with get_client() as client:
            artifacts = await client.read_latest_artifacts()
        return next(a for a in artifacts if a.key == key).data

    return asyncio.run(read())


def test_each_kind_of_drift_is_reported_without_changing_anything(
    make_profile, jira, own_directory, capsys
):
    emulator, url = jira
    make_profile(url, ldap_url=own_directory.url)
    sync(profile="testprof")

    # 1. An administrator puts an account nobody manages into a managed group.
    emulator.seed_user("contractor.x", "x@agency.example", "Contractor X")
    emulator.seed_group("developers", ["contractor.x"])
    # 2. A leaver who leads a project: no default lead, so the account stays active.
    emulator.seed_project("APP", "Application", lead="ejones")
    conn = ldap3.Connection(
        own_directory.url, own_directory.admin_dn, own_directory.admin_password, auto_bind=True
    )
    dn = f"uid=ejones,ou=people,{own_directory.base_dn}"
    assert conn.modify(dn, {"employeeType": [(ldap3.MODIFY_REPLACE, ["inactive"])]})
    conn.unbind()
    # 3. A rule deleted: "managers → project-leads" is no longer in groups.csv.
    folder = make_profile(
        url,
        ldap_url=own_directory.url,
        groups=TEST_GROUPS.replace("managers,project-leads,manual,\n", ""),
    )
    # 4. A store restored from another profile's backup: a second claim on asmith.
    store = Store.open(store_url())
    asmith = store.ledger("testprof", "jira").set_index("name").loc["asmith", "target_key"]
    store.remember(
        "restored",
        "jira",
        [LedgerEntry("user", asmith, "asmith", "s-restored")],
        instance=instance_of(url),
    )
    store.close()
    assert folder.is_dir()
    writes = len(emulator.app.writes())

    sync(profile="testprof", dry_run=True)

    assert len(emulator.app.writes()) == writes  # a dry run, and the report reads only
    page = latest_markdown("drift-testprof")
    assert "| contractor.x | in managed group(s) developers;" in page
    assert "| ejones | source user disabled or gone, account still active:" in page
    assert "leads project Application (APP)" in page
    assert "| asmith | claimed by profiles restored, testprof |" in page
    assert "| project-leads | usersync manages it (ledger) but no rule maps it" in page

    capsys.readouterr()
    assert main(["drift", "testprof"]) == 0
    printed = capsys.readouterr().out
    assert "testprof / jira" in printed
    assert "orphans 1, blocked 1, claimed_twice 1, unmapped_groups 1" in printed
