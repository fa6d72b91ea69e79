"""Fixtures for flow tests: one Prefect test server per session, the sample directory in a real
slapd, a sandbox Jira over HTTP, and a profile folder wired to both."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prefect.testing.utilities import prefect_test_harness
from usersync_sandbox.jira import JiraEmulator
from usersync_sandbox.server import serve
from usersync_sandbox.slapd import SlapdServer

REPO = Path(__file__).resolve().parents[2]
JIRA_PASSWORD = "jira-admin-secret"
#: The group rules flow tests use unless a test writes its own.
TEST_GROUPS = """source_group,target_group,mode,targets
engineering,developers,manual,
managers,project-leads,manual,
*,,on-the-fly,
,jira-software-users,default,jira
"""


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[None]:
    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(scope="module")
def directory() -> Iterator[SlapdServer]:
    with SlapdServer.for_demo() as server:
        yield server


@pytest.fixture
def jira() -> Iterator[tuple[JiraEmulator, str]]:
    emulator = JiraEmulator(context_path="/jira", admin=("admin", JIRA_PASSWORD))
    with serve(emulator.app) as url:
        yield emulator, url + "/jira"


@pytest.fixture
def make_profile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, directory: SlapdServer
) -> Callable[..., Path]:
    """Write mappings/<name>/ under tmp_path from the demo profile, pointed at the test servers.

    Returns a function (jira_url, name="testprof", attributes=None, groups=None,
    ldap_password=None, extra_settings="", extra_source="", ldap_url=None, extra_targets="")
    -> the folder.
    Extra YAML lines are indented by the caller (two spaces under source/settings).
    """
    root = tmp_path / "mappings"
    monkeypatch.setenv("USERSYNC_MAPPINGS_DIR", str(root))
    monkeypatch.setenv("USERSYNC_STORE_URL", f"sqlite:///{tmp_path / 'store.db'}")
    monkeypatch.setenv("TEST_LDAP_PASSWORD", directory.admin_password)
    monkeypatch.setenv("TEST_JIRA_PASSWORD", JIRA_PASSWORD)

    def make(
        jira_url: str,
        name: str = "testprof",
        attributes: str | None = None,
        groups: str | None = None,
        ldap_password: str | None = None,
        extra_settings: str = "",
        extra_source: str = "",
        ldap_url: str | None = None,
        extra_targets: str = "",
    ) -> Path:
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        if ldap_password is not None:
            monkeypatch.setenv("TEST_LDAP_PASSWORD", ldap_password)
        (folder / "profile.yaml").write_text(
            f"""
source:
  kind: ldap
  url: {ldap_url or directory.url}
  bind_dn: {directory.admin_dn}
  bind_password: {{env: TEST_LDAP_PASSWORD}}
  allow_cleartext_bind: true
  user_base_dn: ou=people,{directory.base_dn}
  group_base_dn: ou=groups,{directory.base_dn}
  disabled_filter: (employeeType=inactive)
  page_size: 7
{extra_source}
targets:
  jira:
    kind: jira
    url: {jira_url}
    auth: {{kind: basic, username: admin, password: {{env: TEST_JIRA_PASSWORD}}}}
    max_attempts: 2
    timeout_seconds: 5
{extra_targets}
settings:
  protected_usernames: [admin]
{extra_settings}
""",
            encoding="utf-8",
        )
        demo = REPO / "mappings" / "demo"
        if attributes is None:
            shutil.copy(demo / "attributes.csv", folder / "attributes.csv")
        else:
            (folder / "attributes.csv").write_text(attributes, encoding="utf-8")
        (folder / "groups.csv").write_text(groups or TEST_GROUPS, encoding="utf-8")
        return folder

    return make
