"""The Jira emulator driven by third-party clients: the `jira` package (pycontribs) and
atlassian-python-api (`atlassian.Jira`).

Both are used against real Jira DC sites for user and group administration, so what they send
is what a real Jira accepts; the emulator must accept it too, or it would only be faithful to
usersync's own client. Every test checks the emulator's state after the calls, not only that
the client raised nothing. Where a client is itself wrong for DC, the call is left out with the
reason beside it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import requests
from atlassian import Jira
from jira import JIRA
from usersync_sandbox.jira import JiraEmulator
from usersync_sandbox.server import serve

from usersync.targets.jira import JiraTarget

ADMIN = ("admin", "admin-secret")
CONTEXT_PATH = "/jira"


@dataclass
class Site:
    emulator: JiraEmulator
    url: str
    component: str


@pytest.fixture
def site() -> Iterator[Site]:
    """A served emulator with project APP led by `lead`, whose component Backend `lead` leads."""
    emulator = JiraEmulator(context_path=CONTEXT_PATH, admin=ADMIN)
    emulator.seed_user("lead", "lead@example.com", "Lead")
    emulator.seed_user("heir", "heir@example.com", "Heir")
    emulator.seed_project("APP", "Application", "lead")
    component = emulator.seed_component("APP", "Backend", "lead")
    with serve(emulator.app) as url:
        yield Site(emulator, url + CONTEXT_PATH, component)


# -- jira (pycontribs) -----------------------------------------------------------------------


@pytest.fixture
def pycontribs(site: Site) -> Iterator[JIRA]:
    client = JIRA(site.url, basic_auth=ADMIN)
    yield client
    client.close()


def test_jira_package_user_and_group_administration(site: Site, pycontribs: JIRA) -> None:
    emulator = site.emulator

    # Sends `"notification": "True"` (a string) and uses /rest/api/latest.
    assert pycontribs.add_user("Bob", "bob@example.com", fullname="Bob B", notify=True)
    assert pycontribs.add_user("bob", "other@example.com", ignore_existing=True)
    assert emulator.user("bob").email == "bob@example.com"
    assert pycontribs.user("bob").displayName == "Bob B"
    # includeInactive=True arrives as "True" (pycontribs/jira#1694); Jira reads it as true.
    assert [u.name for u in pycontribs.search_users("bo", includeInactive=True)] == ["bob"]

    assert pycontribs.add_group("crew")
    assert "crew" in pycontribs.groups()
    assert pycontribs.add_user_to_group("bob", "crew")
    # The legacy GET /group?expand=users pages.
    assert list(pycontribs.group_members("crew")) == ["bob"]
    assert emulator.group_members("crew") == {"bob"}
    assert pycontribs.remove_user_from_group("bob", "crew")
    assert emulator.group_members("crew") == set()

    pycontribs.rename_user("bob", "robert")
    assert emulator.user("robert").email == "bob@example.com"

    # Not called: deactivate_user() posts the HTML Edit User form
    # (/secure/admin/user/EditUser.jspa, not REST) on Server/DC, and this version sends its
    # fields JSON-encoded under a form content type, which no Jira can read; it also needs a
    # WebSudo session on real sites (pycontribs/jira#348, #470). The emulator has no HTML forms.
    assert [u.name for u in pycontribs.search_users("rob", includeInactive=True)] == ["robert"]

    # DELETE user/?username= (with the slash), which Jersey matches as /user.
    assert pycontribs.delete_user("robert")
    assert emulator.user("robert") is None
    assert pycontribs.remove_group("crew")
    assert "crew" not in emulator.group_names


def test_jira_package_project_and_component_leads(site: Site, pycontribs: JIRA) -> None:
    emulator = site.emulator

    assert [p.key for p in pycontribs.projects()] == ["APP"]
    project = pycontribs.project("APP")
    assert project.lead.name == "lead"
    components = pycontribs.project_components("APP")
    assert [(c.name, c.lead.name) for c in components] == [("Backend", "lead")]

    # Resource.update PUTs the bean's own `self` URL and reloads it from there.
    pycontribs.component(site.component).update(leadUserName="heir")
    assert emulator.component_lead(site.component) == "heir"
    project.update(lead="heir")
    assert emulator.project_lead("APP") == "heir"
    assert pycontribs.project("APP").lead.name == "heir"


# -- atlassian-python-api ---------------------------------------------------------------------


@pytest.fixture
def apa(site: Site) -> Iterator[Jira]:
    client = Jira(site.url, username=ADMIN[0], password=ADMIN[1])
    yield client
    client.close()


def test_atlassian_python_api_user_and_group_administration(site: Site, apa: Jira) -> None:
    emulator = site.emulator

    created = apa.user_create("carol", "carol@example.com", "Carol")  # notification: true
    assert created["key"] == emulator.user("carol").key
    apa.user_create("dave", "dave@example.com", "Dave", password="pw", notification=False)
    assert apa.user("carol")["emailAddress"] == "carol@example.com"

    apa.create_group("team")
    apa.add_user_to_group(username="carol", group_name="team")
    apa.add_user_to_group(username="dave", group_name="team")
    members = apa.get_all_users_from_group("team")
    assert sorted(u["name"] for u in members["values"]) == ["carol", "dave"]
    apa.remove_user_from_group(username="dave", group_name="team")
    assert emulator.group_members("team") == {"carol"}

    # user_deactivate sends {"active": "false", "name": ...}: Jira's Jackson reads the string.
    apa.user_deactivate("dave")
    assert not emulator.user("dave").active
    # includeInactiveUsers=False arrives as "False".
    assert apa.get_all_users_from_group("team", include_inactive_users=True)["total"] == 1

    apa.remove_group("team")
    assert "team" not in emulator.group_names
    apa.user_remove(username="dave")
    assert emulator.user("dave") is None


def test_atlassian_python_api_user_properties(site: Site, apa: Jira) -> None:
    emulator = site.emulator
    emulator.seed_user("erin", "erin@example.com", "Erin")

    apa.user_set_property(username="erin", key_property="department", value_property="Sales")
    apa.user_set_property(username="erin", key_property="prefs", value_property={"theme": "dark"})
    assert apa.user_property(username="erin", key_property="department")["value"] == "Sales"
    assert emulator.user_properties("erin") == {"department": "Sales", "prefs": {"theme": "dark"}}
    # A property written by another client is read by usersync's as it is stored.
    target = JiraTarget("jira", site.url, username=ADMIN[0], password=ADMIN[1])
    with target:
        read = target.read_custom_attributes(target.read_users(["erin"]), ["department", "prefs"])
    assert dict(zip(read["name"], read["value"], strict=True)) == {
        "department": "Sales",
        "prefs": '{"theme": "dark"}',
    }

    # Not called: user_properties() lists keys with `?accountId=<username>` even on DC (reference
    # §1.5), which DC does not know; a real DC answers that without the keys, as the emulator does.
    apa.user_delete_property(username="erin", key_property="department")
    assert emulator.user_properties("erin") == {"prefs": {"theme": "dark"}}


def test_atlassian_python_api_project_leaders(site: Site, apa: Jira) -> None:
    emulator = site.emulator

    assert list(apa.project_leaders()) == [
        {
            "project_key": "APP",
            "project_name": "Application",
            "lead_name": "Lead",
            "lead_key": "lead",
            "lead_email": "lead@example.com",
        }
    ]
    assert [c["leadUserName"] for c in apa.get_project_components("APP")] == ["lead"]

    # A project lead cannot be deactivated; the refusal is Jira's error envelope.
    with pytest.raises(requests.HTTPError, match="project lead of APP"):
        apa.user_deactivate("lead")
    assert emulator.user("lead").active

    # update_component_lead sends the component's id in the body too.
    apa.update_component_lead(site.component, "heir")
    apa.update_project("APP", {"lead": "heir"})
    assert emulator.project_lead("APP") == emulator.component_lead(site.component) == "heir"
    apa.user_deactivate("lead")
    assert not emulator.user("lead").active
