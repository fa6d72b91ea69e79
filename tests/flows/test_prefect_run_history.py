"""What the run history shows, read back through the Prefect API as the UI reads it.

A dry run says it is one (name and tag); a target whose load failed or was partial shows a
Failed load task while the other targets complete; targets run at once, their task runs
tagged with the target and the instance; a load publishes its progress while it runs.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
)
from usersync_flows.sync import SyncFailed, sync
from usersync_sandbox.faults import WRITE_METHODS
from usersync_sandbox.serve import Sandbox

from tests.flows.conftest import JIRA_PASSWORD

pytestmark = [pytest.mark.slapd, pytest.mark.prefect, pytest.mark.usefixtures("prefect_server")]

CONFLUENCE_TARGET = """  confluence:
    kind: confluence
    url: {url}
    auth: {{kind: basic, username: admin, password: {{env: TEST_JIRA_PASSWORD}}}}
    max_attempts: 2
    timeout_seconds: 5"""


def flow_run_and_tasks(flow_run_id: UUID):
    async def read():
        async with get_client() as client:
            run = await client.read_flow_run(flow_run_id)
            tasks = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
        return run, {t.name: t for t in tasks}

    return asyncio.run(read())


def artifact_versions(key: str) -> list:
    async def read():
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
            )

    return asyncio.run(read())


def test_a_dry_run_is_named_and_tagged_as_one(make_profile, jira):
    _, url = jira
    make_profile(url, name="history")

    dry = sync(profile="history", dry_run=True, return_state=True)
    real = sync(profile="history", return_state=True)

    dry_run, _ = flow_run_and_tasks(dry.state_details.flow_run_id)
    real_run, _ = flow_run_and_tasks(real.state_details.flow_run_id)
    assert dry_run.name == "sync-history-dry-run"
    assert "dry-run" in dry_run.tags
    assert real_run.name == "sync-history"
    assert "dry-run" not in real_run.tags


def test_a_partial_load_fails_its_load_task_while_the_other_target_completes(make_profile):
    with Sandbox(["jira", "confluence"], admin_password=JIRA_PASSWORD) as sandbox:
        make_profile(
            sandbox.url("jira"),
            extra_targets=CONFLUENCE_TARGET.format(url=sandbox.url("confluence")),
        )
        # Jira refuses its first write outright: one failed operation, the rest go on.
        faults = sandbox.emulators["jira"].app.faults
        faults.only_methods = ("POST",)
        faults.script.append("400")

        state = sync(profile="testprof", return_state=True)

    assert state.is_failed()
    with pytest.raises(SyncFailed, match="jira: partial"):
        state.result()
    run, tasks = flow_run_and_tasks(state.state_details.flow_run_id)
    assert tasks["load-jira"].state.is_failed()
    assert "jira: load partial: 1 operation(s) failed" in tasks["load-jira"].state.message
    assert tasks["plan-jira"].state.is_completed()
    assert tasks["load-confluence"].state.is_completed()
    summary = next(a for a in artifact_versions("summary-testprof") if a.flow_run_id == run.id)
    assert "## jira: failed operations" in summary.data
    assert "| jira | partial |" in summary.data
    assert "| confluence | succeeded |" in summary.data


def test_targets_run_at_once_each_task_tagged_with_its_target_and_instance(make_profile):
    with Sandbox(["jira", "confluence"], admin_password=JIRA_PASSWORD) as sandbox:
        folder = make_profile(
            sandbox.url("jira"),
            extra_targets=CONFLUENCE_TARGET.format(url=sandbox.url("confluence")),
        )
        # The rendezvous below may hold a write for a while: no client gives up meanwhile.
        profile = folder / "profile.yaml"
        profile.write_text(
            profile.read_text().replace("timeout_seconds: 5", "timeout_seconds: 120")
        )
        meeting = _Rendezvous(["jira", "confluence"])
        for name, emulator in sandbox.emulators.items():
            emulator.app.app = meeting.gate(name, emulator.app.app)
        state = sync(profile="testprof", return_state=True)
        jira_instance = sandbox.url("jira").split("/")[2]

    assert state.is_completed()
    # Neither target waited for the other to finish: each product's first write was held
    # until the other product had received its first write too. Run one after the other,
    # the first target's write would have waited out the rendezvous alone. (Timestamps are
    # not used: on a loaded machine one target's thread was seen to take its instance slot
    # seconds after the other target had finished, though both ran at once.)
    assert meeting.met == {"jira": True, "confluence": True}, meeting.met
    _, tasks = flow_run_and_tasks(state.state_details.flow_run_id)
    chains = {
        target: [t for name, t in tasks.items() if name.endswith(f"-{target}")]
        for target in ("jira", "confluence")
    }
    assert {t.name for t in chains["jira"]} >= {"transform-jira", "plan-jira", "load-jira"}
    for task in chains["jira"]:
        assert {"target:jira", f"instance:{jira_instance}"} <= set(task.tags), task.name
    assert "target:confluence" in tasks["load-confluence"].tags


class _Rendezvous:
    """Holds the first write each product receives until every product has received one.

    `met[name]` says whether that product's first write saw the others arrive within
    `timeout` seconds (False: it waited alone, so the targets did not run at once).
    """

    def __init__(self, names: list[str], timeout: float = 90.0) -> None:
        self.barrier = threading.Barrier(len(names))
        self.timeout = timeout
        self.met: dict[str, bool] = {}

    def gate(self, name: str, app: Callable) -> Callable:
        async def gated(scope: dict, receive: Callable, send: Callable) -> None:
            if (
                scope["type"] == "http"
                and scope["method"] in WRITE_METHODS
                and name not in self.met
            ):
                self.met[name] = False  # set before any await: only the first write waits
                try:
                    await asyncio.to_thread(self.barrier.wait, self.timeout)
                    self.met[name] = True
                except threading.BrokenBarrierError:
                    pass
            await app(scope, receive, send)

        return gated


def test_a_load_publishes_its_progress_while_it_runs(make_profile, jira):
    emulator, url = jira
    make_profile(url, name="progress")
    emulator.app.faults.latency_seconds = 0.1  # about 60 writes, 4 at a time: a few seconds

    finished = threading.Event()
    result: dict = {}

    def run() -> None:
        try:
            result["outcomes"] = sync(profile="progress")
        finally:
            finished.set()

    threading.Thread(target=run).start()
    seen: set[float] = set()
    while not finished.wait(0.25):
        seen |= {a.data for a in artifact_versions("load-progress-jira")}
    final = artifact_versions("load-progress-jira")

    assert result["outcomes"][0]["status"] == "succeeded"
    assert any(0 < progress < 100 for progress in seen), seen
    (artifact,) = final
    assert artifact.type == "progress"
    assert artifact.data == 100
    assert artifact.description.startswith("load of jira: done,")
    assert artifact.description.endswith("succeeded")


def test_a_load_goes_on_when_its_progress_cannot_be_published(make_profile, jira, monkeypatch):
    import usersync_tasks.progress

    def refused(*args, **kwargs):
        raise RuntimeError("the API refused the artifact")

    monkeypatch.setattr(usersync_tasks.progress, "update_progress_artifact", refused)
    _, url = jira
    make_profile(url, name="no-progress")

    outcomes = sync(profile="no-progress")

    assert outcomes[0]["status"] == "succeeded"
    assert outcomes[0]["executed"]["create_user"]["succeeded"] == 18


def test_an_extract_publishes_what_it_has_read(make_profile, jira):
    _, url = jira
    make_profile(url, name="extract-progress")

    sync(profile="extract-progress", dry_run=True)

    (artifact,) = artifact_versions("extract-extract-progress")
    assert artifact.type == "progress"
    assert artifact.data == 100
    # The sample directory's users and groups, counted as the pages came in.
    assert artifact.description.startswith("source read done: "), artifact.description
    assert " users" in artifact.description and " groups" in artifact.description


def test_extract_progress_is_estimated_from_the_last_read(monkeypatch):
    import usersync_tasks.progress as module

    published: list[tuple[float, str]] = []
    monkeypatch.setattr(module, "create_progress_artifact", lambda **kw: "artifact")
    monkeypatch.setattr(
        module,
        "update_progress_artifact",
        lambda _id, progress, description: published.append((progress, description)),
    )
    monkeypatch.setattr(module, "REPORT_EVERY_SECONDS", 0.01)

    with module.extract_progress("k", {"users": 100, "groups": 100}) as heard:
        heard("users", 100)
        heard("groups", 50)
        waited = threading.Event()
        while (75.0, "source read: 100 users, 50 groups") not in published:
            assert not waited.wait(0.01)

    assert (75.0, "source read: 100 users, 50 groups") in published
    assert published[-1] == (100.0, "source read done: 100 users, 50 groups")
