"""The engine's logs reach the run's log: read back through the Prefect API, as the UI shows it.

The engine logs with the standard library (`usersync.http` says when it retries a 503 or waits
out a 429); those lines must be in the flow run's logs, whether the engine logged them inside
a task or in the load's own worker threads, which have no Prefect context.
"""

from __future__ import annotations

import asyncio
import time
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from usersync_flows.sync import sync

pytestmark = [pytest.mark.slapd, pytest.mark.prefect, pytest.mark.usefixtures("prefect_server")]


def run_logs(flow_run_id: UUID, wanted: str, timeout: float = 30) -> list:
    """The flow run's logs once one contains `wanted` (logs reach the API in batches)."""

    async def read():
        async with get_client() as client:
            return await client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
            )

    deadline = time.monotonic() + timeout
    while True:
        logs = asyncio.run(read())
        if any(wanted in log.message for log in logs) or time.monotonic() > deadline:
            return logs
        time.sleep(0.5)


def test_engine_warnings_from_a_task_and_from_the_load_threads_are_in_the_run_log(
    make_profile, jira
):
    emulator, url = jira
    make_profile(url, name="logged")

    # The first read of Jira (the plan task) gets a 503: the client retries and says so.
    emulator.app.faults.script.append("503")
    planned = sync(profile="logged", dry_run=True, return_state=True)
    # The first write (in the load's worker threads) gets a 429: the client waits and says so.
    emulator.app.faults.only_methods = ("POST",)
    emulator.app.faults.retry_after_seconds = 1
    emulator.app.faults.script.append("429")
    loaded = sync(profile="logged", return_state=True)

    assert planned.is_completed() and loaded.is_completed()
    plan_logs = run_logs(planned.state_details.flow_run_id, "HTTP 503, retrying")
    (retry,) = [log for log in plan_logs if "HTTP 503, retrying" in log.message]
    assert retry.name == "usersync.http"
    assert retry.level == 30  # WARNING
    assert retry.task_run_id is not None  # logged inside the plan task
    load_logs = run_logs(loaded.state_details.flow_run_id, "HTTP 429, retrying")
    (wait,) = [log for log in load_logs if "HTTP 429, retrying in 1.0s" in log.message]
    assert wait.name == "usersync.http"
    assert wait.flow_run_id == loaded.state_details.flow_run_id
    # Nothing from one run lands in the other's log.
    assert not any("HTTP 429" in log.message for log in plan_logs)
