"""Two IdPs on one Jira: employees from a real slapd, contractors pushed into the SCIM inbox.

Dave Brown (dbrown) is in both: the directory lists him, and miniOrange pushes him as a
contractor. What an administrator checks: his account has one owner and never changes hands
by accident, the other profile reports him once, second runs write nothing, a declared
precedence decides who owns him whatever ran first, and runs of the two profiles never write
to the instance at the same time.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from usersync_cli.main import main
from usersync_flows.sync import sync
from usersync_sandbox.push import Sample, SampleUser, push_sample
from usersync_sandbox.server import serve

from tests.flows.conftest import REPO
from tests.flows.test_sync_flow import jira_user
from usersync.config import instance_of
from usersync.inbox import PREFIX, InboxApp, issue_token
from usersync.store import Store, store_url

pytestmark = [pytest.mark.slapd, pytest.mark.prefect, pytest.mark.usefixtures("prefect_server")]

CONTRACTORS = Sample(
    users=(
        SampleUser("dbrown", "Dave", "Brown", "dave.brown@contractor.example"),
        SampleUser("xcarter", "Xena", "Carter", "xcarter@contractor.example"),
        SampleUser("yli", "Yan", "Li", "yli@contractor.example"),
    ),
    groups={"contractors": ("dbrown", "xcarter", "yli")},
)
GROUPS = "source_group,target_group,mode,targets\n*,,on-the-fly,\n"


@pytest.fixture
def two_profiles(make_profile, jira, tmp_path) -> Callable[..., tuple[Path, Path]]:
    """employees (slapd) and contractors (SCIM inbox, pushed) on the same sandbox Jira."""
    _, url = jira

    def make(employees_precedence: int | None = None, contractors_precedence: int | None = None):
        employees = make_profile(
            url,
            name="employees",
            groups=GROUPS,
            extra_settings=_precedence(employees_precedence),
        )
        contractors = employees.parent / "contractors"
        contractors.mkdir()
        (contractors / "profile.yaml").write_text(
            f"""
source:
  kind: miniorange-push
targets:
  jira:
    kind: jira
    url: {url}
    auth: {{kind: basic, username: admin, password: {{env: TEST_JIRA_PASSWORD}}}}
    max_attempts: 2
    timeout_seconds: 5
settings:
  protected_usernames: [admin]
{_precedence(contractors_precedence)}
""",
            encoding="utf-8",
        )
        (contractors / "attributes.csv").write_bytes(
            (REPO / "mappings" / "demo-push" / "attributes.csv").read_bytes()
        )
        (contractors / "groups.csv").write_text(GROUPS, encoding="utf-8")
        store = Store.open(store_url())
        token = issue_token(store.engine, "contractors").token
        with serve(InboxApp(store.engine)) as inbox:
            push_sample(f"{inbox}{PREFIX}/contractors", token, CONTRACTORS)
        store.close()
        return employees, contractors

    return make


def _precedence(value: int | None) -> str:
    return "" if value is None else f"  precedence: {value}"


def owners(url: str) -> dict[str, str]:
    """username → the profile whose ledger links it, on this instance."""
    store = Store.open(store_url())
    try:
        claims = store.claims(instance_of(url), besides="nobody")
    finally:
        store.close()
    found: dict[str, str] = {}
    for name, profile in zip(claims["name"], claims["profile"], strict=True):
        assert name.casefold() not in found, f"{name} is claimed twice"
        found[name.casefold()] = profile
    return found


def conflicts_about(outcomes: list[dict], username: str) -> list[dict]:
    return [c for o in outcomes for c in o["conflicts"] if c["username"] == username]


def test_an_account_keeps_its_owner_and_the_other_profile_reports_it_once(
    two_profiles, jira, capsys
):
    emulator, url = jira
    two_profiles()

    sync(profile="employees")
    contractors = sync(profile="contractors")

    assert owners(url)["dbrown"] == "employees"
    (conflict,) = conflicts_about(contractors, "dbrown")
    assert "managed by profile employees" in conflict["reason"]
    # The contractor source did not rewrite the employee's e-mail.
    assert jira_user(url, "dbrown")["emailAddress"] == "dbrown@example.org"
    assert owners(url)["xcarter"] == "contractors"
    # Both groups keep both profiles' members.
    writes = len(emulator.app.writes())
    again = [sync(profile="employees"), sync(profile="contractors")]
    assert [o[0]["planned"] for o in again] == [{}, {}]
    assert len(emulator.app.writes()) == writes
    assert owners(url)["dbrown"] == "employees"
    assert len(conflicts_about(again[1], "dbrown")) == 1
    assert conflicts_about(again[0], "dbrown") == []

    # `usersync conflicts` lists it from the store, under the profile that reported it.
    capsys.readouterr()
    assert main(["conflicts"]) == 0
    printed = capsys.readouterr().out
    assert "contractors / jira" in printed
    assert "dbrown: account 'dbrown' is managed by profile employees" in printed
    assert "employees / jira" not in printed


def test_a_declared_precedence_decides_whatever_ran_first(two_profiles, jira):
    emulator, url = jira
    two_profiles(employees_precedence=2, contractors_precedence=1)

    sync(profile="employees")  # takes dbrown first
    assert owners(url)["dbrown"] == "employees"
    contractors = sync(profile="contractors")  # ranks first: takes him over
    employees = sync(profile="employees")  # leaves him quietly

    assert owners(url)["dbrown"] == "contractors"
    assert conflicts_about(contractors, "dbrown") == []
    assert conflicts_about(employees, "dbrown") == []
    assert jira_user(url, "dbrown")["emailAddress"] == "dave.brown@contractor.example"
    assert jira_user(url, "dbrown")["active"] is True
    assert "deactivate_user" not in employees[0]["planned"]
    writes = len(emulator.app.writes())
    again = [sync(profile="employees"), sync(profile="contractors")]
    assert [o[0]["planned"] for o in again] == [{}, {}]
    assert len(emulator.app.writes()) == writes


def test_runs_of_two_profiles_on_one_instance_are_serialised(two_profiles, jira):
    emulator, url = jira
    two_profiles()
    emulator.app.faults.latency_seconds = 0.03  # each load takes a while
    states = {}

    def run(profile: str) -> None:
        states[profile] = sync(profile=profile, return_state=True)

    threads = [threading.Thread(target=run, args=(p,)) for p in ("employees", "contractors")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    spans = {}
    for profile, state in states.items():
        assert state.is_completed(), (profile, state)
        tasks = _task_runs(state.state_details.flow_run_id)
        chain = [t for t in tasks if t.name in ("plan-jira", "load-jira")]
        assert {t.name for t in chain} == {"plan-jira", "load-jira"}
        spans[profile] = (min(t.start_time for t in chain), max(t.end_time for t in chain))
    (a_start, a_end), (b_start, b_end) = spans.values()
    assert a_end <= b_start or b_end <= a_start, spans  # one after the other
    # Whoever came first owns dbrown; the other reported him; nobody holds him twice.
    owner = owners(url)["dbrown"]
    other = "contractors" if owner == "employees" else "employees"
    assert len(conflicts_about(states[other].result(), "dbrown")) == 1


def _task_runs(flow_run_id):
    async def read():
        async with get_client() as client:
            return await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )

    return asyncio.run(read())
