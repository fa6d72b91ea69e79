"""User and group settings end to end: a real slapd, the sandbox Jira over HTTP, the sync flow.

What each test checks is what an administrator would check in Jira over its REST API.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import ldap3
import pytest
from usersync_flows.sync import sync
from usersync_sandbox.slapd import SlapdServer

from tests.flows.conftest import JIRA_PASSWORD
from tests.flows.test_sync_flow import jira_group_members, jira_user
from usersync.errors import ConfigError

pytestmark = [pytest.mark.slapd, pytest.mark.prefect, pytest.mark.usefixtures("prefect_server")]

ATTRIBUTES = """target,source,transform,regex,replacement,template,default,targets
username,uid,strip lower,,,,,
email,mail,strip lower,,,,,
display_name,displayName|cn,strip,,,,,
custom:employee-type,employeeType,strip upper,,,,,jira
"""


@pytest.fixture
def own_directory() -> Iterator[SlapdServer]:
    with SlapdServer.for_demo() as server:
        yield server


def modify(directory: SlapdServer, dn: str, changes: dict) -> None:
    conn = ldap3.Connection(
        directory.url, directory.admin_dn, directory.admin_password, auto_bind=True
    )
    assert conn.modify(f"{dn},ou=people,{directory.base_dn}", changes), conn.result
    conn.unbind()


def jira_property(url: str, username: str, key: str) -> object:
    response = httpx.get(
        f"{url}/rest/api/2/user/properties/{key}",
        params={"username": username},
        auth=("admin", JIRA_PASSWORD),
    )
    if response.status_code == 404:
        return None
    response.raise_for_status()
    return response.json()["value"]


def jira_project_lead(url: str, key: str) -> str:
    response = httpx.get(f"{url}/rest/api/2/project/{key}", auth=("admin", JIRA_PASSWORD))
    response.raise_for_status()
    return response.json()["lead"]["name"]


def test_custom_attributes_become_jira_user_properties(make_profile, jira, own_directory):
    emulator, url = jira
    make_profile(url, attributes=ATTRIBUTES, ldap_url=own_directory.url)

    sync(profile="testprof")

    assert jira_property(url, "asmith", "employee-type") == "STAFF"
    assert jira_property(url, "dbrown", "employee-type") == "CONTRACTOR"
    writes = len(emulator.app.writes())
    again = sync(profile="testprof")
    assert again[0]["planned"] == {}
    assert len(emulator.app.writes()) == writes  # equal values: nothing written

    modify(own_directory, "uid=dbrown", {"employeeType": [(ldap3.MODIFY_REPLACE, ["staff"])]})
    outcomes = sync(profile="testprof")
    assert outcomes[0]["planned"] == {"update_user": 1}
    assert jira_property(url, "dbrown", "employee-type") == "STAFF"
    # Only the property was written: no PUT /user for an unchanged account.
    last = emulator.app.writes()[writes:]
    assert [r.method for r in last] == ["PUT"]
    assert "/user/properties/employee-type" in last[0].path


def test_custom_attributes_on_a_product_without_them_are_refused_at_validate(make_profile, jira):
    _, url = jira
    extra = """  wiki:
    kind: confluence
    url: http://127.0.0.1:9/confluence
    auth: {kind: basic, username: admin, password: {env: NOPE}}"""
    make_profile(url, attributes=ATTRIBUTES.replace(",jira\n", ",\n"), extra_targets=extra)
    with pytest.raises(ConfigError, match=r"attributes.csv line 5: confluence \(target wiki\)"):
        sync(profile="testprof")


def test_a_leaving_project_lead_hands_the_project_over_before_deactivation(
    make_profile, jira, own_directory
):
    emulator, url = jira
    make_profile(
        url,
        ldap_url=own_directory.url,
        extra_targets="    default_project_lead: lead.admin",
    )
    emulator.seed_user("lead.admin", "lead.admin@corp", "Lead Admin")
    sync(profile="testprof")
    emulator.seed_project("APP", "Application", lead="ejones")
    component = emulator.seed_component("APP", "Backend", lead="ejones")

    modify(own_directory, "uid=ejones", {"employeeType": [(ldap3.MODIFY_REPLACE, ["inactive"])]})
    dry = sync(profile="testprof", dry_run=True)
    assert dry[0]["planned"] == {"reassign_lead": 2, "deactivate_user": 1}
    assert jira_project_lead(url, "APP") == "ejones"  # the dry run wrote nothing

    outcomes = sync(profile="testprof")

    assert outcomes[0]["status"] == "succeeded"
    assert jira_project_lead(url, "APP") == "lead.admin"
    assert emulator.component_lead(component) == "lead.admin"
    assert jira_user(url, "ejones")["active"] is False


def test_without_a_default_lead_the_project_lead_is_reported_not_deactivated(
    make_profile, jira, own_directory
):
    emulator, url = jira
    make_profile(url, ldap_url=own_directory.url)
    sync(profile="testprof")
    emulator.seed_project("APP", "Application", lead="ejones")
    modify(own_directory, "uid=ejones", {"employeeType": [(ldap3.MODIFY_REPLACE, ["inactive"])]})

    outcomes = sync(profile="testprof")

    assert outcomes[0]["status"] == "succeeded"
    assert "deactivate_user" not in outcomes[0]["planned"]
    (conflict,) = [c for c in outcomes[0]["conflicts"] if c["username"] == "ejones"]
    assert "leads project Application (APP)" in conflict["reason"]
    assert jira_user(url, "ejones")["active"] is True
    assert jira_project_lead(url, "APP") == "ejones"


GROUP_RULES = """source_group,target_group,mode,targets,create,keep_existing_users
sales,sales-team,manual,,,no
support,helpdesk,manual,,no,
*,,on-the-fly,,,
,jira-software-users,default,,,
,welcome,default-new,,,
"""


def test_group_settings_against_jira(make_profile, jira, own_directory):
    emulator, url = jira
    settings = """  groups:
    include: ['^(sales|support|eng)']
    rename_pattern: '^eng(.*)$'
    rename_to: 'dev\\1'"""
    make_profile(url, groups=GROUP_RULES, ldap_url=own_directory.url, extra_settings=settings)
    emulator.seed_user("outsider", "outsider@corp", "Out Sider")
    emulator.seed_group("sales-team", ["outsider"])

    outcomes = sync(profile="testprof")

    assert outcomes[0]["status"] == "succeeded"
    # The filter kept sales, support and engineering; the rename made "engineering" "devineering".
    assert jira_group_members(url, "devineering") >= {"asmith", "bjohnson"}
    groups_of_asmith = {g["name"] for g in jira_user(url, "asmith")["groups"]["items"]}
    assert "managers" not in groups_of_asmith  # not included by the filter
    # A manual rule with keep_existing_users: no removed the member the directory lacks.
    assert "outsider" not in jira_group_members(url, "sales-team")
    assert jira_group_members(url, "sales-team") == {"ejones", "hdavis", "irodriguez", "mjones"}
    # "helpdesk" is not created (create: no), and is reported.
    assert any("'helpdesk'" in c["reason"] for c in outcomes[0]["conflicts"])
    # Neither "helpdesk" (create: no) nor the source names of manually mapped groups
    # (a manual rule wins over "*") exist in Jira.
    for absent in ("helpdesk", "support", "sales"):
        response = httpx.get(
            f"{url}/rest/api/2/group/member",
            params={"groupname": absent},
            auth=("admin", JIRA_PASSWORD),
        )
        assert response.status_code == 404, absent
    # New users joined "welcome" once; a hand removal is not undone.
    assert "asmith" in jira_group_members(url, "welcome")
    httpx.delete(
        f"{url}/rest/api/2/group/user",
        params={"groupname": "welcome", "username": "asmith"},
        auth=("admin", JIRA_PASSWORD),
    ).raise_for_status()
    again = sync(profile="testprof")
    assert again[0]["planned"] == {}
    assert "asmith" not in jira_group_members(url, "welcome")


def test_keep_existing_groups_false_removes_managed_users_from_unmapped_groups(make_profile, jira):
    emulator, url = jira
    make_profile(url, extra_settings="  groups:\n    keep_existing_groups: false")
    emulator.seed_user("outsider", "outsider@corp", "Out Sider")
    sync(profile="testprof")
    # An administrator put a managed and an unmanaged account in a group no rule maps.
    emulator.seed_group("legacy", ["asmith", "outsider"])

    outcomes = sync(profile="testprof")

    assert outcomes[0]["planned"] == {"remove_membership": 1}
    assert jira_group_members(url, "legacy") == {"outsider"}
    assert "developers" in {g["name"] for g in jira_user(url, "asmith")["groups"]["items"]}
    assert sync(profile="testprof")[0]["planned"] == {}


def test_a_plan_short_of_licence_seats_creates_nobody_rather_than_half(make_profile, jira):
    from usersync_sandbox.bitbucket import BitbucketEmulator
    from usersync_sandbox.server import serve

    _, url = jira
    bitbucket = BitbucketEmulator(admin=("admin", JIRA_PASSWORD), licensed_users=10)
    with serve(bitbucket.app) as bitbucket_url:
        extra = f"""  bitbucket:
    kind: bitbucket
    url: {bitbucket_url}
    auth: {{kind: basic, username: admin, password: {{env: TEST_JIRA_PASSWORD}}}}"""
        make_profile(url, extra_targets=extra)

        outcomes = {o["target"]: o for o in sync(profile="testprof")}

        held = outcomes["bitbucket"]
        assert held["seats"]["needed"] > 9 and held["seats"]["free"] == 9
        assert held["seats"]["held_back"] == held["seats"]["needed"]
        assert "create_user" not in held["planned"]
        assert bitbucket.licensed_count() == 1  # only the admin: nobody half-provisioned
        assert (
            sum("free seat(s)" in c["reason"] for c in held["conflicts"]) == held["seats"]["needed"]
        )
        assert outcomes["jira"]["executed"]["create_user"]["succeeded"] > 9  # unaffected

        bitbucket.licensed_users = 100  # the licence is raised: the next run goes on
        again = {o["target"]: o for o in sync(profile="testprof")}
        assert again["bitbucket"]["executed"]["create_user"]["succeeded"] == held["seats"]["needed"]


@pytest.mark.parametrize("product", ["jira", "confluence"])
def test_a_jira_or_confluence_short_of_seats_gets_nobody_new(make_profile, jira, product):
    from usersync_sandbox.confluence import ConfluenceEmulator
    from usersync_sandbox.jira import JiraEmulator
    from usersync_sandbox.server import serve

    _, url = jira
    admin = ("admin", JIRA_PASSWORD)
    emulator = (
        JiraEmulator(context_path="/x", admin=admin, seats=5)
        if product == "jira"
        else ConfluenceEmulator(context_path="/x", admin=admin, license_limit=5)
    )
    with serve(emulator.app) as served:
        extra = f"""  limited:
    kind: {product}
    url: {served}/x
    auth: {{kind: basic, username: admin, password: {{env: TEST_JIRA_PASSWORD}}}}"""
        make_profile(url, extra_targets=extra)
        writes = len(emulator.app.writes())

        outcomes = {o["target"]: o for o in sync(profile="testprof")}

        held = outcomes["limited"]
        assert held["seats"]["held_back"] == held["seats"]["needed"] > held["seats"]["free"]
        assert "create_user" not in held["planned"]
        # Nothing that gives access was sent (group creations may be).
        sent = [r for r in emulator.app.writes()[writes:] if "user" in r.path.lower()]
        assert [r.path for r in sent if r.method == "POST"] == []
