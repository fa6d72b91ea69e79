"""Approving a braked plan in the Prefect UI: a deployment run pauses with a form instead of
failing, and what the administrator answers decides.

Each run here is a flow run of a deployment (created over the API as `prefect deploy` does)
executed in-process as a worker would, against a real slapd and the sandbox Jira; the test
answers the form through the API the UI uses (`resume_flow_run` with the form's input).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from uuid import UUID

import ldap3
import pytest
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.flow_engine import run_flow
from prefect.flow_runs import resume_flow_run
from prefect.logging.handlers import APILogWorker
from usersync_cli.main import main
from usersync_flows.sync import sync
from usersync_sandbox.server import serve
from usersync_sandbox.slapd import SlapdServer

from tests.flows.test_prefect_alerts import Receiver
from tests.flows.test_prefect_run_history import artifact_versions
from tests.flows.test_sync_flow import jira_user
from usersync.store import Store, store_url

pytestmark = [pytest.mark.slapd, pytest.mark.prefect, pytest.mark.usefixtures("prefect_server")]

LEAVERS = ("bjohnson", "cwilliams", "dbrown")


@pytest.fixture
def own_directory() -> Iterator[SlapdServer]:
    with SlapdServer.for_demo() as server:
        yield server


def disable(directory: SlapdServer, *uids: str) -> None:
    conn = ldap3.Connection(
        directory.url, directory.admin_dn, directory.admin_password, auto_bind=True
    )
    for uid in uids:
        dn = f"uid={uid},ou=people,{directory.base_dn}"
        assert conn.modify(dn, {"employeeType": [(ldap3.MODIFY_REPLACE, ["inactive"])]})
    conn.unbind()


class DeploymentRun:
    """A run of deployment sync/<profile>, executed here in a thread as a worker would."""

    def __init__(self, profile: str) -> None:
        with get_client(sync_client=True) as client:
            flow_id = client.create_flow(sync)
            deployment = client.create_deployment(
                flow_id, profile, parameters={"profile": profile}, entrypoint="flows/sync.py:sync"
            )
            self.flow_run = client.create_flow_run_from_deployment(deployment)
        self.deployment_id = deployment
        self.state = None
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _run(self) -> None:
        # What the run form sends: every parameter (the deployment's values and the defaults).
        parameters = {
            "profile": self.flow_run.parameters["profile"],
            "targets": None,
            "dry_run": False,
            "allow_mass_changes": False,
            "full": False,
            "wait_seconds": 0,
        }
        self.state = run_flow(
            sync, flow_run=self.flow_run, parameters=parameters, return_type="state"
        )

    @property
    def id(self) -> UUID:
        return self.flow_run.id

    def wait_paused(self, timeout: float = 60) -> str:
        """Wait until the run pauses for input; return the markdown shown above the form."""
        deadline = time.monotonic() + timeout
        with get_client(sync_client=True) as client:
            while time.monotonic() < deadline:
                run = client.read_flow_run(self.id)
                if run.state.is_paused() and run.state.state_details.run_input_keyset:
                    keyset = run.state.state_details.run_input_keyset
                    try:
                        described = client.read_flow_run_input(self.id, keyset["description"])
                    except Exception:
                        described = None
                    if described:
                        return described
                assert self.thread.is_alive(), f"the run ended: {self.state}"
                time.sleep(0.3)
        raise AssertionError("the run never paused for an approval")

    def answer(self, approve: bool, name: str = "Olivia Ops") -> None:
        resume_flow_run(self.id, run_input={"approve": approve, "name": name, "comment": ""})

    def finish(self, timeout: float = 120, *, tidy: bool = True):
        self.thread.join(timeout)
        assert not self.thread.is_alive()
        if tidy:
            with get_client(sync_client=True) as client:  # the server is the session's
                client.delete_deployment(self.deployment_id)
        return self.state

    def logs(self) -> list[str]:
        APILogWorker.drain_all(timeout=5)  # what the run logged so far, on the server
        with get_client(sync_client=True) as client:
            return [
                log.message
                for log in client.read_logs(
                    LogFilter(flow_run_id=LogFilterFlowRunId(any_=[self.id]))
                )
            ]


def braked_profile(make_profile, jira, directory, **settings) -> str:
    _, url = jira
    extra = "\n".join(f"  {k}: {v}" for k, v in {"max_deactivations": 1, **settings}.items())
    make_profile(url, name="braked", ldap_url=directory.url, extra_settings=extra)
    sync(profile="braked")  # every sample user provisioned
    disable(directory, *LEAVERS)
    return url


def run_approvals() -> list[dict]:
    store = Store.open(store_url())
    try:
        runs = store.runs("braked", limit=20)
    finally:
        store.close()
    return [dict(r) for r in runs.to_dict("records")]


def test_an_approved_braked_plan_runs_and_the_approval_is_recorded(
    make_profile, jira, own_directory
):
    url = braked_profile(make_profile, jira, own_directory)
    run = DeploymentRun("braked")

    shown = run.wait_paused()
    assert "deactivations: **3** (limit max_deactivations=1)" in shown
    assert "plan-braked-jira" in shown
    assert all(jira_user(url, u)["active"] for u in LEAVERS)  # nothing written while waiting
    run.answer(approve=True)
    state = run.finish()

    assert state.is_completed(), state
    assert not any(jira_user(url, u)["active"] for u in LEAVERS)
    latest = run_approvals()
    approved = latest[0]["counts"]["approval"]
    assert approved["approved"] is True and approved["by"] == "Olivia Ops"
    assert approved["channel"] == "ui"
    assert latest[0]["status"] == "succeeded"
    assert latest[1]["status"] == "braked"  # the run that waited keeps the decision too
    assert latest[1]["counts"]["approval"]["by"] == "Olivia Ops"


def test_a_rejected_braked_plan_writes_nothing(make_profile, jira, own_directory):
    url = braked_profile(make_profile, jira, own_directory)
    run = DeploymentRun("braked")

    run.wait_paused()
    run.answer(approve=False, name="Rita Reviewer")
    state = run.finish()

    assert state.is_failed() and state.name == "Braked", state
    assert "Rita Reviewer rejected it" in state.message
    assert all(jira_user(url, u)["active"] for u in LEAVERS)
    assert run_approvals()[0]["counts"]["approval"]["approved"] is False
    # What was planned and what was done are apart: nothing was written.
    summary = next(a for a in artifact_versions("summary-braked") if a.flow_run_id == run.id)
    row = next(line for line in summary.data.splitlines() if line.startswith("| jira |"))
    assert "| planned | done |" in summary.data
    assert "| deactivate_user 3 | nothing |" in row
    assert any("planned deactivate_user 3; done nothing" in m for m in run.logs())


def test_an_unanswered_approval_times_out_as_a_rejection(make_profile, jira, own_directory):
    url = braked_profile(make_profile, jira, own_directory, approval_timeout_seconds=3)
    run = DeploymentRun("braked")

    state = run.finish()

    # Braked (not Prefect's "paused and never resumed", which "sync failed" would report too).
    assert state.is_failed() and state.name == "Braked", state
    assert "the approval timed out" in state.message
    assert all(jira_user(url, u)["active"] for u in LEAVERS)
    latest = run_approvals()[0]
    assert latest["counts"]["approval"]["channel"] == "timeout"
    assert latest["counts"]["approval"]["approved"] is False
    assert "the approval timed out" in latest["error"]


def test_a_plan_that_changed_while_paused_is_put_to_the_approver_again(
    make_profile, jira, own_directory
):
    url = braked_profile(make_profile, jira, own_directory)
    run = DeploymentRun("braked")

    first = run.wait_paused()
    assert "deactivations: **3**" in first
    disable(own_directory, "ejones")  # the directory changes while the run waits
    run.answer(approve=True)

    second = run.wait_paused()
    assert "differs from the one shown before" in second
    assert "deactivations: **4**" in second
    assert jira_user(url, "ejones")["active"]  # the first approval did not cover her
    run.answer(approve=True)
    state = run.finish()

    assert state.is_completed(), state
    assert not any(jira_user(url, u)["active"] for u in (*LEAVERS, "ejones"))


def test_outside_a_deployment_the_brake_fails_the_target_as_before(
    make_profile, jira, own_directory
):
    url = braked_profile(make_profile, jira, own_directory)

    state = sync(profile="braked", return_state=True)

    assert state.is_failed()
    assert "exceeds the brake" in state.message
    assert all(jira_user(url, u)["active"] for u in LEAVERS)


def test_usersync_sync_on_a_terminal_asks_there(make_profile, jira, own_directory, monkeypatch):
    import builtins

    from usersync_tasks import approval

    url = braked_profile(make_profile, jira, own_directory)
    monkeypatch.setattr(approval, "channel", lambda: "terminal")
    asked: list[str] = []
    monkeypatch.setattr(builtins, "input", lambda prompt: asked.append(prompt) or "Tom Terminal")

    outcomes = sync(profile="braked")

    assert len(asked) == 1 and "Type your name to approve" in asked[0]
    assert outcomes[0]["status"] == "succeeded"
    assert outcomes[0]["approval"]["by"] == "Tom Terminal"
    assert not any(jira_user(url, u)["active"] for u in LEAVERS)


@pytest.fixture
def approval_alerts() -> Iterator[Receiver]:
    """`usersync alerts install` notifying a receiver in this test; removed afterwards."""
    app = Receiver()
    with serve(app) as url:
        CustomWebhookNotificationBlock(
            name="usersync approval receiver",
            url=url,
            json_data={"subject": "{{subject}}", "body": "{{body}}"},
        ).save("usersync-approval-test", overwrite=True)
        assert main(["alerts", "install", "--block", "usersync-approval-test"]) == 0
        yield app
    with get_client(sync_client=True) as client:
        for automation in client.read_automations():
            if automation.name.startswith("usersync:"):
                client.delete_automation(automation.id)


def test_a_paused_run_asks_for_its_approval_and_usersync_approve_answers(
    make_profile, jira, own_directory, approval_alerts, capsys
):
    url = braked_profile(make_profile, jira, own_directory)
    run = DeploymentRun("braked")
    run.wait_paused()

    asked = approval_alerts.wait_for("waits for an approval")
    body = asked["body"]
    assert "braked waits for an approval" in asked["subject"]
    assert "jira: 3 destructive operation(s), every one in the artifact plan-braked-jira" in body
    assert "- deactivations: 3 (limit max_deactivations=1)" in body
    assert f"/runs/flow-run/{run.id}" in body  # the run's page in the UI
    assert "counts as a rejection" in body and "(UTC)" in body  # the deadline
    assert f"usersync approve {run.id} --name" in body
    assert "the brake stopped" not in str(approval_alerts.messages)  # asked, not yet braked

    # A run that is not paused, or a name nobody carries, is one line, exit 1 or 2.
    assert main(["approve", "no-such-run", "--name", "Olivia Ops"]) == 2
    assert "no paused flow run named 'no-such-run'" in capsys.readouterr().err
    assert main(["approve", str(run.id), "--name", "Olivia Ops", "--comment", "HR confirmed"]) == 0
    assert f"approved: flow run sync-braked ({run.id})" in capsys.readouterr().out
    state = run.finish()

    assert state.is_completed(), state
    assert not any(jira_user(url, u)["active"] for u in LEAVERS)
    decided = run_approvals()[0]["counts"]["approval"]
    assert decided["approved"] is True and decided["by"] == "Olivia Ops"
    assert decided["comment"] == "HR confirmed"
    assert main(["reject", str(run.id), "--name", "Rita Reviewer"]) == 1
    assert "is not waiting for an approval: it is Completed" in capsys.readouterr().err


def test_usersync_reject_by_the_runs_name_writes_nothing(make_profile, jira, own_directory):
    url = braked_profile(make_profile, jira, own_directory)
    run = DeploymentRun("braked")
    run.wait_paused()

    assert main(["reject", "sync-braked", "--name", "Rita Reviewer", "--comment", "not HR"]) == 0
    state = run.finish()

    assert "Rita Reviewer rejected it" in state.message
    assert all(jira_user(url, u)["active"] for u in LEAVERS)
    decided = run_approvals()[0]["counts"]["approval"]
    assert decided["approved"] is False and decided["comment"] == "not HR"


def test_a_paused_run_holds_its_profile_later_runs_queue_or_skip_and_none_fails(
    make_profile, jira, own_directory, monkeypatch
):
    from usersync import lease

    url = braked_profile(make_profile, jira, own_directory)
    monkeypatch.setattr(lease, "RENEW_EVERY_SECONDS", 0.5)
    first = DeploymentRun("braked")
    first.wait_paused()
    store = Store.open(store_url())
    held = store.acquire_lease("braked", "a probe")
    time.sleep(2)  # a few renewals: the paused run keeps the profile's lease
    renewed = store.acquire_lease("braked", "a probe")
    store.close()
    assert held["holder"] == renewed["holder"] == f"flow run sync-braked ({first.id})"
    assert renewed["expires_at"] > held["expires_at"]

    second = DeploymentRun("braked")  # the next scheduled run: queues behind the paused one
    deadline = time.monotonic() + 60
    while not any("waits for its turn" in m for m in second.logs()):
        assert time.monotonic() < deadline and second.thread.is_alive(), second.state
        time.sleep(0.5)
    third = DeploymentRun("braked")  # one more: the second already waits, so it is skipped
    skipped = third.finish(tidy=False)
    assert skipped.is_completed() and skipped.name == "Skipped", skipped
    assert "is queued behind it" in skipped.message
    assert second.thread.is_alive()  # still waiting: nothing read or written

    first.answer(approve=True)
    assert first.finish(tidy=False).is_completed()
    state = second.finish()

    assert state.is_completed() and state.name == "Completed", state
    assert any("its turn came after" in m for m in second.logs())
    assert not any(jira_user(url, u)["active"] for u in LEAVERS)
    statuses = [r["status"] for r in run_approvals()]
    assert "failed" not in statuses
